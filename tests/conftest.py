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
