"""Resolving a presented API key (``X-api-key`` or ``Authorization: Bearer``) to a principal."""

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, NamedTuple

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.api_keys import key_matches, split_prefix
from app.db import driver, has_driver, utcnow
from app.errors import NotAuthenticated
from app.models import ApiKey, Membership, Role, User

if TYPE_CHECKING:
    from app.auth.principal import Principal

LAST_USED_RESOLUTION = timedelta(minutes=1)


# Built once: the key, its user and the user's membership of the key's team.
_KEY_WITH_MEMBERSHIP = (
    select(
        ApiKey.id, ApiKey.team_id, ApiKey.user_id, ApiKey.key_hash, ApiKey.read_only,
        ApiKey.revoked_at, ApiKey.expires_at, ApiKey.last_used_at,
        User.is_active, User.email, Membership.role,
    )  # fmt: skip
    .join(User, User.id == ApiKey.user_id)
    .outerjoin(
        Membership,
        (Membership.team_id == ApiKey.team_id) & (Membership.user_id == ApiKey.user_id),
    )
    .where(ApiKey.prefix == bindparam("prefix"))
)
# The same query for PostgreSQL's driver, which every request runs (see services/fast_turn.py).
_KEY_WITH_MEMBERSHIP_SQL = """
SELECT k.id, k.team_id, k.user_id, k.key_hash, k.read_only, k.revoked_at, k.expires_at,
       k.last_used_at, u.is_active, u.email, m.role
FROM api_key k JOIN user_account u ON u.id = k.user_id
LEFT JOIN membership m ON m.team_id = k.team_id AND m.user_id = k.user_id
WHERE k.prefix = $1
"""


class _KeyRow(NamedTuple):
    id: int
    team_id: int
    user_id: int
    key_hash: str
    read_only: bool
    revoked_at: datetime | None
    expires_at: datetime | None
    last_used_at: datetime | None
    is_active: bool
    email: str
    role: str | None


async def _find_key(session: AsyncSession, prefix: str) -> _KeyRow | None:
    if has_driver(session):
        async with driver(session) as connection:
            row = await connection.fetchrow(_KEY_WITH_MEMBERSHIP_SQL, prefix)
    else:
        row = (await session.execute(_KEY_WITH_MEMBERSHIP, {"prefix": prefix})).first()
    return None if row is None else _KeyRow(*row)


async def resolve_api_key(session: AsyncSession, raw_key: str) -> "Principal | None":
    """The key's principal; None for an unknown, revoked or expired key. Raises 401 with the
    SPEC's messages when the key is fine but its user is inactive or no longer a member."""
    from app.auth.principal import Principal

    prefix = split_prefix(raw_key)
    if prefix is None:
        return None
    key = await _find_key(session, prefix)
    if key is None:
        return None
    now = utcnow()
    if (
        not key_matches(raw_key, key.key_hash)
        or key.revoked_at is not None
        or (key.expires_at is not None and key.expires_at <= now)
    ):
        return None
    if not key.is_active:
        raise NotAuthenticated("User inactive or deleted.")
    if key.role is None:
        raise NotAuthenticated("Incorrect authentication credentials.")
    if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
        # At most one write a minute per key, not one per request.
        await session.execute(
            update(ApiKey)
            .where(
                ApiKey.id == key.id,
                or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - LAST_USED_RESOLUTION),
            )
            .values(last_used_at=now)
        )
    return Principal(
        kind="api_key",
        team_id=key.team_id,
        user_id=key.user_id,
        user_email=key.email,
        role=Role(key.role),
        read_only=key.read_only,
        credential_id=f"api_key:{key.id}",
    )
