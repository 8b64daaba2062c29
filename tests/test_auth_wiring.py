"""Where the pieces of the auth issue meet: the login page and /o/token/ under their rate limits
(SPEC §4.7), and OAuth tokens in the process's memory of lookups (a revocation through this
process takes effect at once; one elsewhere within CHATBOTS_AUTH_CACHE_SECONDS). Each test runs
an app of its own with the settings it needs, on the database under test."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from app.main import create_app
from app.models import OAuthToken
from app.crypto import sha256_hex
from app.db import utcnow
from tests.assertions import assert_error
from tests.browser import PASSWORD, give_password, new_browser, post_login
from tests.oauth_helpers import bearer, user_tokens
from tests.redis_server import new_ip

INVALID_TOKEN = {"detail": "Invalid token."}


@pytest.fixture
def own_app(settings: Any):  # type: ignore[no-untyped-def]
    @asynccontextmanager
    async def build(**overrides: Any) -> AsyncIterator[Any]:
        application = create_app(settings.model_copy(update=overrides))
        async with application.router.lifespan_context(application):
            yield application

    return build


async def test_login_failures_reach_429_and_then_even_the_right_password_waits(own_app, db, world):
    await give_password(db, world.user)
    async with own_app(rate_limit_login_account="2/15 minutes") as app:
        async with new_browser(app, client_host=new_ip()) as browser:
            for remaining in (1, 0):
                r = await post_login(browser, world.user.email, "not the password")
                assert r.status_code == 400
                assert r.headers["x-ratelimit-limit"] == "2" and r.headers["x-ratelimit-remaining"] == str(remaining)
            r = await post_login(browser, world.user.email, PASSWORD)
            assert r.status_code == 429 and r.headers["content-type"].startswith("text/html")
            assert 1 <= int(r.headers["retry-after"]) <= 900
            assert "Too many failed logins" in r.text and "sessionid" not in r.cookies


async def test_a_successful_login_is_not_counted(own_app, db, world):
    await give_password(db, world.user)
    async with own_app(rate_limit_login_account="1/15 minutes") as app:
        for _ in range(3):
            async with new_browser(app, client_host=new_ip()) as browser:
                assert (await post_login(browser, world.user.email, PASSWORD)).status_code == 303


async def test_the_token_endpoint_answers_429_past_its_limit(own_app):
    async with own_app(rate_limit_token="2/minute") as app:
        async with new_browser(app, client_host=new_ip()) as http:
            for remaining in (1, 0):
                r = await http.post("/o/token/", data={"grant_type": "authorization_code", "code": "nope"})
                assert r.status_code in (400, 401) and r.headers["x-ratelimit-remaining"] == str(remaining)
            r = await http.post("/o/token/", data={"grant_type": "authorization_code", "code": "nope"})
            assert r.status_code == 429
            assert r.json()["detail"] == "Rate limit exceeded." and r.json()["available_in"] >= 1


async def test_a_remembered_oauth_token_is_forgotten_at_once_when_this_process_revokes_it(own_app, db, world):
    async with own_app(auth_cache_seconds=60.0) as app:
        oauth_client, tokens = await user_tokens(app, db, world, public=True)
        async with new_browser(app) as http:
            chat = lambda: http.post(world.url, json={"message": "hi"}, headers=bearer(tokens["access_token"]))  # noqa: E731
            assert (await chat()).status_code == 200
            assert len(app.state.runtime.credentials) >= 1
            r = await http.post("/o/revoke_token/", data={"token": tokens["access_token"], "client_id": oauth_client.client_id})
            assert r.status_code == 200
            assert_error(await chat(), 401, INVALID_TOKEN)


async def test_a_remembered_oauth_token_revoked_elsewhere_works_until_forgotten(own_app, db, world):
    async with own_app(auth_cache_seconds=60.0) as app:
        _, tokens = await user_tokens(app, db, world, public=True)
        async with new_browser(app) as http:
            chat = lambda: http.post(world.url, json={"message": "hi"}, headers=bearer(tokens["access_token"]))  # noqa: E731
            assert (await chat()).status_code == 200
            async with db() as s:  # another process (the CLI, another replica) revokes it
                await s.execute(update(OAuthToken).where(OAuthToken.access_token_hash == sha256_hex(tokens["access_token"]))
                                .values(revoked_at=utcnow()))  # fmt: skip
                await s.commit()
            assert (await chat()).status_code == 200  # within the documented bound
            app.state.runtime.credentials.clear()  # the bound has passed
            assert_error(await chat(), 401, INVALID_TOKEN)
