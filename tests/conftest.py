"""Shared fixtures. The suite runs against SQLite by default and against PostgreSQL when
CHATBOTS_TEST_DATABASE_URL is set (``.ci/run`` does both)."""

import os

import pytest

from app.migrate import upgrade_database_sync

pytest_plugins = ["tests.fake_llm_fixture"]


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated database for the whole run. Tests create their own teams, so they never
    see each other's rows and need no cleanup."""
    url = os.environ.get("CHATBOTS_TEST_DATABASE_URL") or (
        f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db')}/test.db"
    )
    upgrade_database_sync(url)
    return url


@pytest.fixture(scope="session")
def settings(database_url: str):  # type: ignore[no-untyped-def]
    from app.config import Settings

    return Settings(
        database_url=database_url,
        secret_key="test-secret-key",
        llm_timeout_seconds=5,
        llm_total_timeout_seconds=8,
        llm_max_retries=1,
        # Deliveries stay pending unless a test runs a worker itself (tests/test_delivery_worker.py).
        worker_in_process=False,
        # Tests change keys, users and memberships behind the app's back and expect the next
        # request to see it: no remembered lookups (tests/test_auth_cache.py tests the cache).
        auth_cache_seconds=0,
        _env_file=None,
    )


@pytest.fixture(scope="session")
async def app(settings):  # type: ignore[no-untyped-def]
    from app.main import create_app

    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="session")
async def client(app):  # type: ignore[no-untyped-def]
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


@pytest.fixture(scope="session")
def db(app):  # type: ignore[no-untyped-def]
    """The app's own sessionmaker, for arranging rows and checking what was written."""
    return app.state.sessionmaker


@pytest.fixture
def ticket_taken(app, monkeypatch):  # type: ignore[no-untyped-def]
    """An event set when a turn takes a ticket: it found its session busy and now waits (the
    store's real method runs; only the moment is recorded)."""
    import asyncio

    store = app.state.runtime.store
    taken = asyncio.Event()
    real = store.take_ticket

    async def recorded(*args, **kwargs):  # type: ignore[no-untyped-def]
        ticket = await real(*args, **kwargs)
        taken.set()
        return ticket

    monkeypatch.setattr(store, "take_ticket", recorded)
    return taken


@pytest.fixture
async def world(db, fake_llm, settings):  # type: ignore[no-untyped-def]
    """A fresh team with an admin, a write key and a published chatbot on the fake LLM."""
    from tests.factories import make_world

    return await make_world(db, settings, api_base=fake_llm.base_url)
