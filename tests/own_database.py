"""A database of its own for tests that run delivery workers: a worker claims every due
delivery, whichever test made it, so it must not share the suite's database (nor see rows left
by earlier runs on a reused PostgreSQL). SQLite: a new file; PostgreSQL: a new database on the
server under test, dropped afterwards."""

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from app.db import make_engine
from app.migrate import upgrade_database


@contextlib.asynccontextmanager
async def own_database(tmp_path: Path, *, migrated: bool = True) -> AsyncIterator[str]:
    """Yields the URL of a new database of the kind the suite runs on, migrated unless a test
    migrates it itself (``migrated=False``: empty)."""
    base = os.environ.get("CHATBOTS_TEST_DATABASE_URL")
    if not base:
        url = f"sqlite+aiosqlite:///{tmp_path}/own-{uuid.uuid4().hex[:8]}.db"
        if migrated:
            await _migrate(url)
        yield url
        return
    parsed = make_url(base)
    name = f"own_{uuid.uuid4().hex[:12]}"
    admin_dsn = parsed.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = parsed.set(database=name).render_as_string(hide_password=False)
        if migrated:
            await _migrate(url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _migrate(url: str) -> None:
    engine = make_engine(url, pool_size=1, max_overflow=0)
    try:
        await upgrade_database(engine)
    finally:
        await engine.dispose()
