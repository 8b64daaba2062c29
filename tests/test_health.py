"""Liveness and readiness probes."""

import httpx

from app.config import Settings
from app.main import create_app


async def test_healthz_and_readyz_on_a_migrated_database(client):
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ok"}


async def test_readyz_is_503_until_migrations_ran(tmp_path):
    app = create_app(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/empty.db", _env_file=None))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/healthz")).status_code == 200
            ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json() == {"status": "unavailable", "reason": "migrations pending"}


async def test_a_started_worker_tunes_the_garbage_collector(app):
    """Start-up (the lifespan, run by the ``app`` fixture) sets the young-generation threshold
    and freezes what start-up made (see app.main.GC_THRESHOLD)."""
    import gc

    from app.main import GC_THRESHOLD

    assert gc.get_threshold() == GC_THRESHOLD != (700, 10, 10)
    assert gc.get_freeze_count() > 0
