"""Rate limits through the API (SPEC §4.7): the team limit on incoming_message (both routes) and
trigger_bot, the per-address limit on failed authentication, their 429 and their headers.

Each test runs its own app with small limits, on the database under test, with the limits
counted in memory and in a real Redis server (``redis-server`` started by the test session;
skipped with the reason when it is not installed). Every test uses a fresh team and a fresh
client address, so counts never carry over between tests on the shared Redis."""

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.auth.resolvers import api_key
from app.main import create_app
from tests.assertions import assert_error, nothing_written
from tests.factories import World, make_world
from tests.redis_server import new_ip

RATE_LIMITED = "Rate limit exceeded."
WINDOW = 300  # the tests' limits are per 5 minutes
HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")


class LimitedApp:
    def __init__(self, app: FastAPI) -> None:
        self.app = app

    @asynccontextmanager
    async def client(self, ip: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
        """A client calling from ``ip`` (a fresh address by default)."""
        transport = httpx.ASGITransport(app=self.app, client=(ip or new_ip(), 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http


@pytest.fixture
def limited_app(settings, limit_storage):  # type: ignore[no-untyped-def]
    """``limited_app(**limits)``: an app of its own with these settings over the suite's."""

    @asynccontextmanager
    async def build(**overrides: Any) -> AsyncIterator[LimitedApp]:
        app = create_app(settings.model_copy(update={**limit_storage, **overrides}))
        async with app.router.lifespan_context(app):
            yield LimitedApp(app)

    return build


async def chat(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> httpx.Response:
    return await client.post(url, json={"message": f"hi {uuid.uuid4()}"}, headers=headers)


async def trigger(client: httpx.AsyncClient, world: World) -> httpx.Response:
    """A trigger_bot the team may make, refused with a 400: the chatbot has no telegram channel."""
    body = {"identifier": "123", "platform": "telegram", "prompt_text": "Say hello",
            "experiment": str(world.chatbot.public_id)}  # fmt: skip
    return await client.post("/api/trigger_bot", json=body, headers=world.headers)


def assert_counted(r: httpx.Response, limit: int, remaining: int) -> None:
    assert r.headers["x-ratelimit-limit"] == str(limit), r.headers
    assert r.headers["x-ratelimit-remaining"] == str(remaining), r.headers
    assert 1 <= int(r.headers["x-ratelimit-reset"]) <= WINDOW, r.headers


def assert_rate_limited(r: httpx.Response, limit: int) -> None:
    """429, the SPEC's body, ``Retry-After`` equal to ``available_in``, and the headers."""
    assert r.status_code == 429, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"detail", "available_in"}, body
    assert body["detail"] == RATE_LIMITED
    assert isinstance(body["available_in"], int) and 1 <= body["available_in"] <= WINDOW, body
    assert r.headers["retry-after"] == str(body["available_in"])
    assert_counted(r, limit, 0)


# --- the team limit ------------------------------------------------------------------------------


async def test_team_limit_lets_n_requests_through_then_429(limited_app, world, db):
    async with limited_app(rate_limit_team="3/5 minutes") as app, app.client() as client:
        for remaining in (2, 1, 0):
            r = await chat(client, world.url, world.headers)
            assert r.status_code == 200, r.text
            assert_counted(r, 3, remaining)
        async with nothing_written(db, world):
            r = await chat(client, world.url, world.headers)
    assert_rate_limited(r, 3)


async def test_team_limit_counts_both_incoming_routes_and_trigger_bot(limited_app, world, db):
    async with limited_app(rate_limit_team="3/5 minutes") as app, app.client() as client:
        assert_counted(await chat(client, world.url, world.headers), 3, 2)
        versioned = await chat(client, world.version_url(0), world.headers)
        assert versioned.status_code == 200, versioned.text
        assert_counted(versioned, 3, 1)
        refused = await trigger(client, world)
        assert_error(refused, 400)  # counted all the same, and it says so
        assert_counted(refused, 3, 0)
        async with nothing_written(db, world):
            assert_rate_limited(await chat(client, world.version_url(0), world.headers), 3)
            assert_rate_limited(await trigger(client, world), 3)


async def test_team_limit_leaves_other_teams_alone(limited_app, world, db, fake_llm, settings):
    other = await make_world(db, settings, api_base=fake_llm.base_url)
    async with limited_app(rate_limit_team="2/5 minutes") as app, app.client() as client:
        for _ in range(2):
            assert (await chat(client, world.url, world.headers)).status_code == 200
        assert_rate_limited(await chat(client, world.url, world.headers), 2)
        r = await chat(client, other.url, other.headers)  # same address, another team
    assert r.status_code == 200, r.text
    assert_counted(r, 2, 1)


async def test_team_limit_headers_on_a_400(limited_app, world):
    async with limited_app(rate_limit_team="5/5 minutes") as app, app.client() as client:
        r = await client.post(world.url, json={"message": "  "}, headers=world.headers)
    assert_error(r, 400, {"detail": "Invalid request body.",
                          "errors": {"message": ["This field may not be blank."]}})  # fmt: skip
    assert_counted(r, 5, 4)


async def test_team_limit_is_not_counted_for_refused_credentials(limited_app, world):
    """A 401 is not the team's (there is no team yet): it counts against the address only."""
    async with limited_app(rate_limit_team="1/5 minutes") as app, app.client() as client:
        assert_error(await chat(client, world.url, {"X-api-key": "abc.def"}), 401)
        r = await chat(client, world.url, world.headers)
    assert r.status_code == 200, r.text
    assert_counted(r, 1, 0)


async def test_rate_limits_switched_off_count_nothing(limited_app, world):
    off = {"rate_limit_enabled": False, "rate_limit_team": "1/5 minutes",
           "rate_limit_auth_failures": "1/5 minutes"}  # fmt: skip
    async with limited_app(**off) as app, app.client() as client:
        for _ in range(2):
            assert_error(await chat(client, world.url, {}), 401)
        for _ in range(2):
            r = await chat(client, world.url, world.headers)
            assert r.status_code == 200, r.text
            assert not set(HEADERS) & set(r.headers), r.headers


# --- failed authentication, per client address ---------------------------------------------------


@pytest.fixture
def lookups(monkeypatch) -> list[str]:  # type: ignore[no-untyped-def]
    """The API keys the resolver was asked about (the real resolver runs)."""
    seen: list[str] = []
    real = api_key.resolve

    async def recorded(store, raw, context):  # type: ignore[no-untyped-def]
        seen.append(raw)
        return await real(store, raw, context)

    monkeypatch.setattr(api_key, "resolve", recorded)
    return seen


async def test_failed_authentication_limit_refuses_the_address_even_with_a_valid_key(
    limited_app, world, db, lookups
):
    """Decision: a blocked address is refused before any credential is looked up, a valid one
    included; otherwise the 429 would stop only wrong guesses and a right one would show."""
    ip = new_ip()
    async with limited_app(rate_limit_auth_failures="3/5 minutes") as app, app.client(ip) as client:
        for remaining in (2, 1, 0):
            r = await chat(client, world.url, {"X-api-key": f"abcdefgh.{uuid.uuid4().hex}"})
            assert_error(r, 401, {"detail": "Invalid token."})
            assert_counted(r, 3, remaining)
        lookups.clear()
        async with nothing_written(db, world):
            r = await chat(client, world.url, world.headers)
        assert_rate_limited(r, 3)
        assert lookups == []  # refused before the key was looked up
        r = await trigger(client, world)  # every authenticated route, not only the one guessed on
        assert_rate_limited(r, 3)
        async with app.client() as elsewhere:  # another address is not blocked
            assert (await chat(elsewhere, world.url, world.headers)).status_code == 200


async def test_missing_credentials_count_as_failed_authentication(limited_app, world):
    async with limited_app(rate_limit_auth_failures="2/5 minutes") as app, app.client() as client:
        for remaining in (1, 0):
            r = await chat(client, world.url, {})
            assert_error(r, 401, {"detail": "Authentication credentials were not provided."})
            assert_counted(r, 2, remaining)
        assert_rate_limited(await chat(client, world.url, {}), 2)


async def test_successful_authentication_does_not_count_as_a_failure(limited_app, world):
    async with limited_app(
        rate_limit_auth_failures="2/5 minutes", rate_limit_team="10/5 minutes"
    ) as app, app.client() as client:
        for remaining in range(9, 4, -1):
            r = await chat(client, world.url, world.headers)
            assert r.status_code == 200, r.text
            assert_counted(r, 10, remaining)  # the team's headers, not the failures'


# --- storage -------------------------------------------------------------------------------------


async def test_redis_gives_processes_one_count(settings, redis_url, world):
    """Two apps (as two worker processes) on one Redis share the team's count; on memory each
    would allow the whole limit."""
    limits = {"redis_url": redis_url, "rate_limit_team": "2/5 minutes"}
    first, second = (create_app(settings.model_copy(update=limits)) for _ in range(2))
    async with first.router.lifespan_context(first), second.router.lifespan_context(second):
        async with LimitedApp(first).client() as a, LimitedApp(second).client() as b:
            assert_counted(await chat(a, world.url, world.headers), 2, 1)
            assert_counted(await chat(b, world.url, world.headers), 2, 0)
            assert_rate_limited(await chat(a, world.url, world.headers), 2)


async def test_429_is_in_the_openapi_document(client):
    paths = (await client.get("/openapi.json")).json()["paths"]
    operations = [
        paths["/channels/api/{experiment_id}/incoming_message"]["post"],
        paths["/channels/api/{experiment_id}/v{version}/incoming_message"]["post"],
        paths["/api/trigger_bot"]["post"],
    ]
    for operation in operations:
        response = operation["responses"]["429"]
        schema = response["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/RateLimitedResponse"}
        assert {name.lower() for name in response["headers"]} == {"retry-after", *HEADERS}
