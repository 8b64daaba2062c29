"""The session cookie as a credential (``cookieAuth``, SPEC §4.5) on the Chatbots v1 endpoints,
through the ASGI app with a browser logged in by the real login page: unsafe requests need the
CSRF header, each 401 has the SPEC's message, and a refused request writes nothing."""

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import delete, select, update

from app.auth.csrf import CSRF_COOKIE, CSRF_HEADER
from app.auth.resolvers import cookie as cookie_resolver
from app.auth.web_sessions import SESSION_COOKIE, start_session
from app.db import utcnow
from app.models import Membership, Participant, Role, User
from tests.assertions import assert_error, nothing_written
from tests.browser import browser, give_password, log_in, new_browser  # noqa: F401 (browser: a fixture)
from tests.factories import World, add_user
from tests.test_auth_cache import cached_app  # noqa: F401 (a fixture)
from tests.test_trigger_bot import URL as TRIGGER_URL
from tests.test_trigger_bot import add_channel, body_for, counts

INVALID_TOKEN = {"detail": "Invalid token."}
NOT_PROVIDED = {"detail": "Authentication credentials were not provided."}
INACTIVE = {"detail": "User inactive or deleted."}
NOT_A_MEMBER = {"detail": "Incorrect authentication credentials."}


@pytest.fixture
async def logged_in(browser, db, world):  # type: ignore[no-untyped-def]
    """The world's admin logged in: the browser and its CSRF token."""
    await give_password(db, world.user)
    return browser, await log_in(browser, world.user.email)


def message() -> dict[str, str]:
    return {"message": f"hi {uuid.uuid4()}"}


def cookies_of(session: str, csrf: str | None = None) -> dict[str, str]:
    """A Cookie header, for requests made outside the browser's jar."""
    value = f"{SESSION_COOKIE}={session}" + (f"; {CSRF_COOKIE}={csrf}" if csrf else "")
    return {"Cookie": value}


# --- the endpoints with the cookie and the CSRF header ---------------------------------------


@pytest.mark.parametrize("versioned", [False, True])
async def test_incoming_message_with_cookie_and_csrf_header_is_200_as_the_user(db, world, logged_in, versioned):
    browser, token = logged_in
    url = world.version_url(1) if versioned else world.url
    r = await browser.post(url, json=message(), headers={CSRF_HEADER: token})
    assert r.status_code == 200, r.text
    assert r.json()["response"].startswith("echo: hi ")
    async with db() as s:
        participant = await s.scalar(select(Participant).where(Participant.team_id == world.team.id))
    assert participant is not None
    assert (participant.platform, participant.identifier) == ("api", world.user.email)


async def test_trigger_bot_with_cookie_and_csrf_header_is_200(db, settings, world, logged_in):
    browser, token = logged_in
    await add_channel(db, settings, world, "telegram")
    r = await browser.post(TRIGGER_URL, json=body_for(world), headers={CSRF_HEADER: token})
    assert r.status_code == 200, r.text
    # A safe method needs no CSRF header: the delivery's status with the cookie alone.
    status = await browser.get(f"/api/deliveries/{r.json()['delivery_id']}")
    assert status.status_code == 200, status.text


async def test_a_member_role_may_chat_with_the_cookie(app, db, world):
    async with db() as s:
        member = await add_user(s, world.team, Role.member)
        await s.commit()
    await give_password(db, member)
    async with new_browser(app) as browser:
        token = await log_in(browser, member.email)
        r = await browser.post(world.url, json=message(), headers={CSRF_HEADER: token})
    assert r.status_code == 200, r.text


# --- CSRF ------------------------------------------------------------------------------------------


CSRF_MISTAKES = {
    "no-header": ({}, "CSRF Failed: CSRF token missing."),
    "wrong-header": ({CSRF_HEADER: "x" * 43}, "CSRF Failed: CSRF token incorrect."),
    "empty-header": ({CSRF_HEADER: ""}, "CSRF Failed: CSRF token missing."),
}


@pytest.mark.parametrize("mistake", list(CSRF_MISTAKES))
async def test_incoming_message_without_the_right_csrf_header_is_403_and_writes_nothing(db, world, logged_in, mistake):
    browser, _ = logged_in
    headers, detail = CSRF_MISTAKES[mistake]
    async with nothing_written(db, world):
        r = await browser.post(world.url, json=message(), headers=headers)
    assert_error(r, 403, {"detail": detail})


@pytest.mark.parametrize("mistake", list(CSRF_MISTAKES))
async def test_trigger_bot_without_the_right_csrf_header_is_403_and_writes_nothing(db, settings, world, logged_in, mistake):
    browser, _ = logged_in
    await add_channel(db, settings, world, "telegram")
    headers, detail = CSRF_MISTAKES[mistake]
    before = await counts(db, world)
    r = await browser.post(TRIGGER_URL, json=body_for(world), headers=headers)
    assert_error(r, 403, {"detail": detail})
    assert await counts(db, world) == before


async def test_csrf_header_without_the_csrf_cookie_is_403(app, db, world, logged_in):
    browser, token = logged_in
    async with new_browser(app) as bare, nothing_written(db, world):
        headers = cookies_of(browser.cookies[SESSION_COOKIE]) | {CSRF_HEADER: token}
        r = await bare.post(world.url, json=message(), headers=headers)
    assert_error(r, 403, {"detail": "CSRF Failed: CSRF cookie not set."})


# --- invalid sessions ----------------------------------------------------------------------------


async def _chat_with_cookie(app, world: World, session: str) -> httpx.Response:  # type: ignore[no-untyped-def]
    csrf = "t" * 43
    async with new_browser(app) as bare:
        return await bare.post(world.url, json=message(), headers=cookies_of(session, csrf) | {CSRF_HEADER: csrf})


async def test_unknown_session_cookie_is_401(app, db, world):
    async with nothing_written(db, world):
        r = await _chat_with_cookie(app, world, "not-a-session-" + uuid.uuid4().hex)
    assert_error(r, 401, INVALID_TOKEN)


async def test_expired_session_is_401(app, db, world):
    store = app.state.runtime.store
    raw = await start_session(store, world.user.id, world.team.id, utcnow() - timedelta(hours=2), timedelta(hours=1))
    async with nothing_written(db, world):
        r = await _chat_with_cookie(app, world, raw)
    assert_error(r, 401, INVALID_TOKEN)


async def test_removed_member_is_401_incorrect_credentials(db, world, logged_in):
    browser, token = logged_in
    async with db() as s:
        await s.execute(delete(Membership).where(Membership.user_id == world.user.id))
        await s.commit()
    async with nothing_written(db, world):
        r = await browser.post(world.url, json=message(), headers={CSRF_HEADER: token})
    assert_error(r, 401, NOT_A_MEMBER)


async def test_inactive_user_is_401_user_inactive(db, world, logged_in):
    browser, token = logged_in
    async with db() as s:
        await s.execute(update(User).where(User.id == world.user.id).values(is_active=False))
        await s.commit()
    async with nothing_written(db, world):
        r = await browser.post(world.url, json=message(), headers={CSRF_HEADER: token})
    assert_error(r, 401, INACTIVE)


async def test_a_stale_cookie_is_401_before_any_csrf_check(app, db, world):
    async with new_browser(app) as bare, nothing_written(db, world):
        r = await bare.post(world.url, json=message(), headers=cookies_of("stale-session"))
    assert_error(r, 401, INVALID_TOKEN)


async def test_an_empty_session_cookie_is_no_credential(app, db, world):
    async with new_browser(app) as bare, nothing_written(db, world):
        r = await bare.post(world.url, json=message(), headers=cookies_of(""))
    assert_error(r, 401, NOT_PROVIDED)


# --- a cookie beside a header credential (the decision in app/auth/dependencies.py) --------------


async def test_a_stale_cookie_beside_a_valid_api_key_does_not_break_the_key(app, world):
    async with new_browser(app) as bare:
        r = await bare.post(world.url, json=message(), headers=cookies_of("stale") | world.headers)
    assert r.status_code == 200, r.text


async def test_a_logged_in_browser_calls_with_an_api_key_need_no_csrf_header(db, world, logged_in):
    browser, _ = logged_in  # e.g. /docs authorized with a key, after a login in the same browser
    r = await browser.post(world.url, json=message(), headers=world.headers)
    assert r.status_code == 200, r.text


async def test_a_valid_cookie_does_not_rescue_an_invalid_api_key(db, world, logged_in):
    browser, token = logged_in
    async with nothing_written(db, world):
        r = await browser.post(world.url, json=message(), headers={"X-api-key": "abc", CSRF_HEADER: token})
    assert_error(r, 401, INVALID_TOKEN)


# --- with remembered lookups (app/auth/cache.py; the suite's app remembers none) ---------------


async def test_a_remembered_session_is_looked_up_once_and_a_logout_ends_it_at_once(cached_app, db, world, monkeypatch):
    await give_password(db, world.user)
    lookups = []
    real = cookie_resolver.find_session

    async def counted(*args):  # type: ignore[no-untyped-def]  # the real lookup, counted
        lookups.append(1)
        return await real(*args)

    monkeypatch.setattr(cookie_resolver, "find_session", counted)
    async with new_browser(cached_app) as browser:
        token = await log_in(browser, world.user.email)
        cookie = browser.cookies[SESSION_COOKIE]
        for _ in range(2):
            r = await browser.post(world.url, json=message(), headers={CSRF_HEADER: token})
            assert r.status_code == 200, r.text
        assert len(lookups) == 1
        r = await browser.post("/accounts/logout", headers={CSRF_HEADER: token})
        assert r.status_code == 303
    async with new_browser(cached_app) as replay:
        r = await replay.post(world.url, json=message(), headers=cookies_of(cookie, token) | {CSRF_HEADER: token})
    assert_error(r, 401, INVALID_TOKEN)


async def test_a_remembered_session_is_refused_once_it_has_expired(cached_app, db, world, monkeypatch):
    store = cached_app.state.runtime.store
    raw = await start_session(store, world.user.id, world.team.id, utcnow(), timedelta(minutes=1))
    r = await _chat_with_cookie(cached_app, world, raw)
    assert r.status_code == 200, r.text
    monkeypatch.setattr(cookie_resolver, "utcnow", lambda: datetime.now(UTC) + timedelta(minutes=1))
    async with nothing_written(db, world):
        r = await _chat_with_cookie(cached_app, world, raw)
    assert_error(r, 401, INVALID_TOKEN)  # from memory: no lookup would have found it either
