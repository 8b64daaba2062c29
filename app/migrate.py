"""Run Alembic migrations from code (``chatbots db upgrade`` and the embedded default)."""

import asyncio
from functools import lru_cache

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import REPO_ROOT, Settings


def alembic_config(database_url: str, settings: Settings | None = None) -> Config:
    """``settings``: the app's, for data migrations that need them (the secret key); without
    them a migration reads the environment's (``get_settings()``)."""
    cfg = Config(str(REPO_ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    cfg.attributes["database_url"] = database_url
    cfg.attributes["settings"] = settings
    return cfg


async def upgrade_database(engine: AsyncEngine, settings: Settings | None = None) -> None:
    """Upgrade to head on the given engine's database (idempotent)."""
    cfg = alembic_config(engine.url.render_as_string(hide_password=False), settings)

    def _upgrade(connection) -> None:  # type: ignore[no-untyped-def]
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")

    async with engine.begin() as connection:
        await connection.run_sync(_upgrade)


@lru_cache(maxsize=1)
def head_revisions() -> frozenset[str]:
    """The revisions this code's migrations end at: read from the scripts once per process,
    not per probe."""
    return frozenset(ScriptDirectory.from_config(alembic_config("")).get_heads())


async def current_revisions(engine: AsyncEngine) -> frozenset[str]:
    """The revisions the database is at (none: never migrated)."""

    def _current(connection) -> frozenset[str]:  # type: ignore[no-untyped-def]
        return frozenset(MigrationContext.configure(connection).get_current_heads())

    async with engine.connect() as connection:
        return await connection.run_sync(_current)


async def is_at_head(engine: AsyncEngine) -> bool:
    return await current_revisions(engine) == head_revisions()


def upgrade_database_sync(database_url: str) -> None:
    from app.db import make_engine

    async def _run() -> None:
        engine = make_engine(database_url, pool_size=1, max_overflow=0)
        try:
            await upgrade_database(engine)
        finally:
            await engine.dispose()

    asyncio.run(_run())
