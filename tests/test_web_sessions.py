"""Browser sessions and CSRF (SPEC §4.5), below the pages: a session is found only by its cookie
value (stored hashed), ends at its expiry or at logout, and reads its user's membership live;
the double-submit CSRF check refuses each way of getting it wrong with its own message."""

from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select

from app.auth.csrf import csrf_failure, new_csrf_token
from app.auth.web_sessions import end_session, find_session, start_session
from app.crypto import sha256_hex
from app.db import utcnow
from app.models import Membership, Role, WebSession
from tests.factories import make_world

HOUR = timedelta(hours=1)


async def test_a_session_is_found_by_its_cookie_value_and_stored_only_hashed(app: Any, db: Any, settings: Any, fake_llm: Any) -> None:
    world = await make_world(db, settings, api_base=fake_llm.base_url)
    store, now = app.state.runtime.store, utcnow()
    raw = await start_session(store, world.user.id, world.team.id, now, HOUR)
    found = await find_session(store, raw, now)
    assert found is not None
    assert (found.user_id, found.team_id, found.email, found.is_active) == (world.user.id, world.team.id, world.user.email, True)
    assert found.role == Role.admin
    async with db() as s:
        stored = await s.scalar(select(WebSession.session_hash).where(WebSession.id == found.id))
    assert stored == sha256_hex(raw) and raw not in stored
    assert await find_session(store, raw + "x", now) is None


async def test_a_session_ends_at_its_expiry_and_at_logout(app: Any, db: Any, settings: Any, fake_llm: Any) -> None:
    world = await make_world(db, settings, api_base=fake_llm.base_url)
    store, now = app.state.runtime.store, utcnow()
    raw = await start_session(store, world.user.id, world.team.id, now, HOUR)
    assert await find_session(store, raw, now + HOUR - timedelta(seconds=1)) is not None
    assert await find_session(store, raw, now + HOUR) is None
    await end_session(store, raw)
    assert await find_session(store, raw, now) is None


async def test_a_session_reads_its_users_membership_on_every_lookup(app: Any, db: Any, settings: Any, fake_llm: Any) -> None:
    world = await make_world(db, settings, api_base=fake_llm.base_url)
    store, now = app.state.runtime.store, utcnow()
    raw = await start_session(store, world.user.id, world.team.id, now, HOUR)
    async with db() as s:
        await s.execute(delete(Membership).where(Membership.user_id == world.user.id))
        await s.commit()
    found = await find_session(store, raw, now)
    assert found is not None and found.role is None


def test_csrf_passes_safe_methods_and_a_matching_token() -> None:
    token = new_csrf_token()
    assert len(token) >= 32 and token != new_csrf_token()
    assert csrf_failure("GET", None, None) is None
    assert csrf_failure("POST", token, token) is None


def test_csrf_refuses_each_mistake_with_its_own_message() -> None:
    token = new_csrf_token()
    assert csrf_failure("POST", None, token) == "CSRF Failed: CSRF cookie not set."
    assert csrf_failure("POST", token, None) == "CSRF Failed: CSRF token missing."
    assert csrf_failure("DELETE", token, token[:-1] + "é") == "CSRF Failed: CSRF token incorrect."
