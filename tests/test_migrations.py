"""The migrations build exactly the schema the models declare, on SQLite and PostgreSQL."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from app.db import engine_for
from app.migrate import is_at_head
from app.models import Base


async def test_migrated_database_matches_the_models(settings):
    engine = engine_for(settings)
    try:
        async with engine.connect() as connection:
            diff = await connection.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"compare_type": True}), Base.metadata
                )
            )
        assert diff == []
        assert await is_at_head(engine)
    finally:
        await engine.dispose()
