"""Authentication and authorization of incoming_message with API keys (SPEC §4, §4.1–§4.3):
the exact status and body for each situation, and nothing written by a refused request."""

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.api_keys import generate_api_key
from app.db import utcnow
from app.models import ApiKey, Membership, Role, User
from tests.factories import World, add_key, add_user, make_world
from tests.assertions import assert_error, nothing_written

Db = async_sessionmaker[AsyncSession]

NOT_PROVIDED = {"detail": "Authentication credentials were not provided."}
INVALID_TOKEN = {"detail": "Invalid token."}
FORBIDDEN = {"detail": "You do not have permission to perform this action."}
INACTIVE = {"detail": "User inactive or deleted."}
NOT_A_MEMBER = {"detail": "Incorrect authentication credentials."}

STYLES: dict[str, Callable[[str], dict[str, str]]] = {
    "x-api-key": lambda key: {"X-api-key": key},
    "bearer": lambda key: {"Authorization": f"Bearer {key}"},
}
style = pytest.mark.parametrize("style", list(STYLES))


async def new_key(db: Db, world: World, user: User | None = None, **options: Any) -> str:
    """Another key of the world's admin (or of ``user``); write-enabled unless told otherwise."""
    options.setdefault("read_only", False)
    async with db() as s:
        key = await add_key(s, world.team, user or world.user, **options)
        await s.commit()
    return key


async def key_row(db: Db, key: str) -> ApiKey:
    async with db() as s:
        row = await s.scalar(select(ApiKey).where(ApiKey.prefix == key.split(".", 1)[0]))
    assert row is not None
    return row


async def chat(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> httpx.Response:
    return await client.post(url, json={"message": f"hi {uuid.uuid4()}"}, headers=headers)


def assert_ok(r: httpx.Response) -> None:
    assert r.status_code == 200, r.text
    assert r.json()["response"].startswith("echo: hi ")


# --- no credential ----------------------------------------------------------------------------------


@pytest.mark.parametrize("versioned", [False, True])
async def test_no_credential_is_401_with_www_authenticate(client, db, world, versioned):
    url = world.version_url(1) if versioned else world.url
    async with nothing_written(db, world):
        r = await chat(client, url, {})
    assert_error(r, 401, NOT_PROVIDED)
    assert r.headers["www-authenticate"] == 'Bearer realm="api"'


async def test_other_authorization_schemes_are_no_credential(client, db, world):
    async with nothing_written(db, world):
        r = await chat(client, world.url, {"Authorization": f"Basic {world.key}"})
    assert_error(r, 401, NOT_PROVIDED)
    assert r.headers["www-authenticate"] == 'Bearer realm="api"'


async def test_another_authorization_scheme_beside_a_valid_key_leaves_the_key_to_decide(client, world):
    # A gateway in front may use Basic for its own login: that header is not ours to judge.
    r = await chat(client, world.url, {"X-api-key": world.key, "Authorization": "Basic Zm9vOmJhcg=="})
    assert r.status_code == 200, r.text
    assert r.json()["response"]


# --- invalid keys -------------------------------------------------------------------------------------


async def _unknown(db: Db, world: World) -> str:
    return generate_api_key().key  # well formed, never stored


async def _malformed(db: Db, world: World) -> str:
    return "abc"


async def _wrong_secret(db: Db, world: World) -> str:
    prefix = world.key.split(".", 1)[0]
    return f"{prefix}.{generate_api_key().key.split('.', 1)[1]}"


async def _revoked(db: Db, world: World) -> str:
    return await new_key(db, world, revoked_at=utcnow() - timedelta(minutes=1))


async def _expired(db: Db, world: World) -> str:
    return await new_key(db, world, expires_at=utcnow() - timedelta(seconds=1))


INVALID_KEYS = {
    "unknown": _unknown,
    "malformed": _malformed,
    "wrong-secret": _wrong_secret,
    "revoked": _revoked,
    "expired": _expired,
}


@style
@pytest.mark.parametrize("kind", list(INVALID_KEYS))
async def test_invalid_key_is_401(client, db, world, kind, style):
    key = await INVALID_KEYS[kind](db, world)
    async with nothing_written(db, world):
        r = await chat(client, world.url, STYLES[style](key))
    assert_error(r, 401, INVALID_TOKEN)


@style
async def test_revoked_key_stays_revoked_though_it_would_otherwise_work(client, db, world, style):
    key = await new_key(db, world)
    assert_ok(await chat(client, world.url, STYLES[style](key)))
    async with db() as s:
        await s.execute(update(ApiKey).where(ApiKey.prefix == key.split(".")[0]).values(revoked_at=utcnow()))
        await s.commit()
    async with nothing_written(db, world):
        r = await chat(client, world.url, STYLES[style](key))
    assert_error(r, 401, INVALID_TOKEN)


@style
async def test_key_expiring_in_the_future_works(client, world, db, style):
    key = await new_key(db, world, expires_at=utcnow() + timedelta(minutes=5))
    assert_ok(await chat(client, world.url, STYLES[style](key)))


# --- header and scheme names --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x-API-key", "X-API-KEY", "x-api-key", "X-Api-Key"])
async def test_api_key_header_name_is_case_insensitive(client, world, name):
    assert_ok(await chat(client, world.url, {name: world.key}))


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_bearer_scheme_is_case_insensitive(client, world, scheme):
    assert_ok(await chat(client, world.url, {"Authorization": f"{scheme} {world.key}"}))


# --- permissions and membership ----------------------------------------------------------------------


@style
@pytest.mark.parametrize("versioned", [False, True])
async def test_read_only_key_is_403(client, db, world, style, versioned):
    key = await new_key(db, world, read_only=True)
    url = world.version_url(1) if versioned else world.url
    async with nothing_written(db, world):
        r = await chat(client, url, STYLES[style](key))
    assert_error(r, 403, FORBIDDEN)


async def test_new_keys_are_read_only_by_default(db, world):
    """SPEC §2: ``read_only`` defaults to true (the model's default, used by the admin tools)."""
    async with db() as s:
        generated = generate_api_key()
        s.add(ApiKey(team_id=world.team.id, user_id=world.user.id, name="default",
                     prefix=generated.prefix, key_hash=generated.key_hash))  # fmt: skip
        await s.commit()
    assert (await key_row(db, generated.key)).read_only is True


@style
async def test_inactive_user_is_401(client, db, world, style):
    async with db() as s:
        await s.execute(update(User).where(User.id == world.user.id).values(is_active=False))
        await s.commit()
    async with nothing_written(db, world):
        r = await chat(client, world.url, STYLES[style](world.key))
    assert_error(r, 401, INACTIVE)


@style
async def test_user_no_longer_a_member_is_401(client, db, world, style):
    async with db() as s:
        await s.execute(
            delete(Membership).where(Membership.team_id == world.team.id, Membership.user_id == world.user.id)
        )
        await s.commit()
    async with nothing_written(db, world):
        r = await chat(client, world.url, STYLES[style](world.key))
    assert_error(r, 401, NOT_A_MEMBER)


async def test_membership_of_another_team_does_not_count(client, db, world, fake_llm, settings):
    """The key's user is moved from the key's team to another team: the key stops working."""
    other = await make_world(db, settings, api_base=fake_llm.base_url)
    async with db() as s:
        await s.execute(
            update(Membership)
            .where(Membership.team_id == world.team.id, Membership.user_id == world.user.id)
            .values(team_id=other.team.id)
        )
        await s.commit()
    async with nothing_written(db, world, other):
        r = await chat(client, world.url, world.headers)
        r_other = await chat(client, other.url, world.headers)
    assert_error(r, 401, NOT_A_MEMBER)
    assert_error(r_other, 401, NOT_A_MEMBER)


@pytest.mark.parametrize("role", [Role.member, Role.chatbot_admin, Role.admin])
async def test_any_member_with_a_write_key_can_chat(client, db, world, role):
    async with db() as s:
        user = await add_user(s, world.team, role)
        key = await add_key(s, world.team, user, read_only=False)
        await s.commit()
    r = await chat(client, world.url, {"X-api-key": key})
    assert_ok(r)


# --- several credentials ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(lambda w, bad: {"X-api-key": w.key, "Authorization": f"Bearer {bad}"}, id="valid-x-api-key+bad-bearer"),
        pytest.param(lambda w, bad: {"Authorization": f"Bearer {w.key}", "X-api-key": bad}, id="valid-bearer+bad-x-api-key"),
        pytest.param(lambda w, bad: {"X-api-key": w.key, "X-Embed-Key": bad}, id="valid-x-api-key+bad-embed-key"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("kind", ["unknown", "malformed", "revoked", "expired"])
async def test_an_invalid_credential_beside_a_valid_one_is_401(client, db, world, headers, kind):
    bad = await INVALID_KEYS[kind](db, world)
    async with nothing_written(db, world):
        r = await chat(client, world.url, headers(world, bad))
    assert_error(r, 401, INVALID_TOKEN)


async def test_a_read_only_key_beside_a_write_key_is_not_an_upgrade(client, db, world):
    read_only = await new_key(db, world, read_only=True)
    async with nothing_written(db, world):
        r = await chat(client, world.url, {"Authorization": f"Bearer {read_only}", "X-api-key": world.key})
    assert_error(r, 403, FORBIDDEN)


# --- tenancy ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [None, 1])
async def test_key_of_one_team_cannot_reach_another_teams_chatbot(client, db, world, fake_llm, settings, version):
    other = await make_world(db, settings, api_base=fake_llm.base_url)
    url = other.url if version is None else other.version_url(version)
    async with nothing_written(db, world, other):
        r = await chat(client, url, world.headers)
    assert_error(r, 404, {"detail": "No chatbot matches the given query."})


# --- last_used_at (SPEC §4.2) ---------------------------------------------------------------------------


async def test_last_used_at_is_set_on_first_use_and_not_rewritten_within_a_minute(client, db, world):
    key = await new_key(db, world)
    assert (await key_row(db, key)).last_used_at is None
    before = utcnow()
    assert_ok(await chat(client, world.url, {"X-api-key": key}))
    first = (await key_row(db, key)).last_used_at
    assert first is not None
    assert before - timedelta(seconds=1) <= first <= utcnow() + timedelta(seconds=1)
    assert_ok(await chat(client, world.url, {"Authorization": f"Bearer {key}"}))
    assert (await key_row(db, key)).last_used_at == first


async def test_last_used_at_is_rewritten_after_a_minute(client, db, world):
    key = await new_key(db, world)
    old: datetime = utcnow() - timedelta(minutes=2)
    async with db() as s:
        await s.execute(update(ApiKey).where(ApiKey.prefix == key.split(".")[0]).values(last_used_at=old))
        await s.commit()
    assert_ok(await chat(client, world.url, {"X-api-key": key}))
    assert (await key_row(db, key)).last_used_at > old + timedelta(minutes=1)


async def test_a_request_rejected_for_its_body_still_records_the_keys_use(client, db, settings, fake_llm):
    """The key was used: its use is recorded at authentication, in a write of its own, so no
    transaction is open while the body is read (a stalled client must not hold one)."""
    from sqlalchemy import select

    from app.auth.api_keys import split_prefix
    from app.models import ApiKey
    from tests.factories import make_world

    world = await make_world(db, settings, api_base=fake_llm.base_url)
    bad = await client.post(world.url, json={"message": ""}, headers=world.headers)
    assert bad.status_code == 400
    async with db() as s:
        key = await s.scalar(select(ApiKey).where(ApiKey.prefix == split_prefix(world.key)))
    assert key.last_used_at is not None
