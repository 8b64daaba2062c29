"""The in-process memory of credential lookups (app/auth/cache.py): a steady client costs no
lookup, staleness is bounded by the TTL, failed lookups are never remembered, and ``forget``
takes effect at once."""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from app.auth.cache import CredentialCache
from app.db import utcnow
from app.main import create_app
from app.models import ApiKey
from tests.assertions import assert_error
from tests.factories import make_world

INVALID_TOKEN = {"detail": "Invalid token."}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_remembered_lookup_is_served_until_its_ttl_then_loaded_again() -> None:
    clock, loads = Clock(), []
    cache = CredentialCache(5.0, clock=clock)

    async def load() -> str:
        loads.append(clock.now)
        return f"record@{clock.now}"

    assert await cache.get_or_load("k", load) == "record@100.0"
    clock.now = 104.9
    assert await cache.get_or_load("k", load) == "record@100.0"
    clock.now = 105.0
    assert await cache.get_or_load("k", load) == "record@105.0"
    assert loads == [100.0, 105.0]


async def test_failed_lookups_are_not_remembered_and_forget_is_immediate() -> None:
    cache, loads = CredentialCache(60.0, clock=Clock()), []

    async def missing() -> None:
        loads.append(1)

    assert await cache.get_or_load("k", missing) is None
    assert await cache.get_or_load("k", missing) is None
    assert len(loads) == 2 and len(cache) == 0

    async def found() -> str:
        return "record"

    await cache.get_or_load("k", found)
    cache.forget("k")
    assert len(cache) == 0


async def test_the_cache_is_bounded_and_a_zero_ttl_disables_it() -> None:
    cache = CredentialCache(60.0, max_entries=2, clock=Clock())
    for key in ("a", "b", "c"):
        async def load(key: str = key) -> str:
            return key
        await cache.get_or_load(key, load)
    assert len(cache) == 2  # "a", the oldest, went first

    off, loads = CredentialCache(0), []

    async def counted() -> str:
        loads.append(1)
        return "x"

    await off.get_or_load("k", counted)
    await off.get_or_load("k", counted)
    assert len(loads) == 2 and len(off) == 0


@pytest.fixture
async def cached_app(settings: Any) -> AsyncIterator[Any]:
    """An app of its own that remembers lookups for a minute (the suite's app does not)."""
    application = create_app(settings.model_copy(update={"auth_cache_seconds": 60.0}))
    async with application.router.lifespan_context(application):
        yield application


async def test_a_steady_key_is_looked_up_once_and_a_revocation_elsewhere_waits_for_the_ttl(
    cached_app: Any, db: Any, settings: Any, fake_llm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = await make_world(db, settings, api_base=fake_llm.base_url)
    store, lookups = cached_app.state.runtime.store, []
    real = store.use_api_key

    async def counted(*args: Any) -> Any:  # the store's real lookup, counted
        lookups.append(args[0])
        return await real(*args)

    monkeypatch.setattr(store, "use_api_key", counted)
    transport = httpx.ASGITransport(app=cached_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for _ in range(3):
            r = await client.post(world.url, json={"message": "hi"}, headers={"X-api-key": world.key})
            assert r.status_code == 200, r.text
        assert len(lookups) == 1
        # Revoked by another process (here: straight in the database): within the bound, the
        # remembered record still serves; once forgotten (the TTL, or forget), it is refused.
        async with db() as s:
            await s.execute(update(ApiKey).where(ApiKey.prefix == world.key.split(".")[0]).values(revoked_at=utcnow()))
            await s.commit()
        r = await client.post(world.url, json={"message": "hi"}, headers={"X-api-key": world.key})
        assert r.status_code == 200
        cached_app.state.runtime.credentials.clear()
        r = await client.post(world.url, json={"message": "hi"}, headers={"X-api-key": world.key})
        assert_error(r, 401, INVALID_TOKEN)


async def test_a_wrong_secret_under_a_known_prefix_is_never_served_from_memory(
    cached_app: Any, db: Any, settings: Any, fake_llm: Any
) -> None:
    world = await make_world(db, settings, api_base=fake_llm.base_url)
    transport = httpx.ASGITransport(app=cached_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.post(world.url, json={"message": "hi"}, headers={"X-api-key": world.key})
        assert r.status_code == 200
        prefix, secret = world.key.split(".")
        forged = f"{prefix}.{secret[::-1]}"
        r = await client.post(world.url, json={"message": "hi"}, headers={"X-api-key": forged})
        assert_error(r, 401, INVALID_TOKEN)
