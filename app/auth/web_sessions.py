"""Browser sessions (SPEC §4.5): a random id in the ``sessionid`` cookie, stored only as its
SHA-256 under a unique index, with an expiry; logout deletes the row, so it ends server-side.

A session acts in one team of its user (chosen at login); the user's activity and membership
are read with the session on every request, so a removed member's session stops at once.
"""

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, bindparam, delete, insert, select

from app.auth.cache import CredentialCache
from app.crypto import sha256_hex
from app.models import Membership, Role, User, WebSession
from app.stores.base import TurnStore

SESSION_COOKIE = "sessionid"
_S, _U, _M = WebSession.__table__, User.__table__, Membership.__table__
_TIME = _S.c.expires_at.type

FIND = (
    select(_S.c.id, _S.c.user_id, _S.c.team_id, _S.c.expires_at, _U.c.email, _U.c.is_active, _M.c.role)
    .join(_U, _U.c.id == _S.c.user_id)
    .outerjoin(_M, and_(_M.c.user_id == _S.c.user_id, _M.c.team_id == _S.c.team_id))
    .where(_S.c.session_hash == bindparam("p_hash"), _S.c.expires_at > bindparam("now", type_=_TIME))
)
CREATE = insert(_S).values(
    session_hash=bindparam("p_hash"),
    user_id=bindparam("p_user_id"),
    team_id=bindparam("p_team_id"),
    created_at=bindparam("now", type_=_TIME),
    expires_at=bindparam("expires_at", type_=_TIME),
)
END = delete(_S).where(_S.c.session_hash == bindparam("p_hash"))


@dataclass(frozen=True, slots=True)
class BrowserSession:
    id: int
    user_id: int
    team_id: int
    expires_at: datetime  # checked again by a resolver that remembers the session (app.auth.cache)
    email: str
    is_active: bool
    role: Role | None  # None: no longer a member of the session's team


async def start_session(
    store: TurnStore, user_id: int, team_id: int, now: datetime, lifetime: timedelta
) -> str:
    """A new session; returns the cookie value (shown to the browser only, never stored)."""
    raw = secrets.token_urlsafe(32)
    params = {"p_hash": sha256_hex(raw), "p_user_id": user_id, "p_team_id": team_id,
              "now": now, "expires_at": now + lifetime}  # fmt: skip
    async with store.statements() as run:
        await run.execute(CREATE, params)
    return raw


async def find_session(store: TurnStore, raw: str, now: datetime) -> BrowserSession | None:
    """The unexpired session with this cookie value, or None."""
    async with store.statements(read_only=True) as run:
        row = await run.first(FIND, {"p_hash": sha256_hex(raw), "now": now})
    if row is None:
        return None
    role = Role(row["role"]) if row["role"] is not None else None
    return BrowserSession(
        row["id"], row["user_id"], row["team_id"], row["expires_at"], row["email"], row["is_active"], role
    )


def cache_key(raw: str) -> tuple[str, str]:
    """The session's entry in the process's memory of lookups (``app.auth.cache``)."""
    return ("session", sha256_hex(raw))


async def end_session(store: TurnStore, raw: str, cache: CredentialCache | None = None) -> None:
    """Delete the session; this process forgets it at once (others within their cache's TTL)."""
    async with store.statements() as run:
        await run.execute(END, {"p_hash": sha256_hex(raw)})
    if cache is not None:
        cache.forget(cache_key(raw))
