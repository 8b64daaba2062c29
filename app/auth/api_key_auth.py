"""Resolving a presented API key (``X-api-key`` or ``Authorization: Bearer``) to a principal."""

from datetime import timedelta
from typing import TYPE_CHECKING

from app.auth.api_keys import key_matches, split_prefix
from app.db import utcnow
from app.errors import NotAuthenticated
from app.models import Role
from app.stores.base import TurnStore

if TYPE_CHECKING:
    from app.auth.principal import Principal

LAST_USED_RESOLUTION = timedelta(minutes=1)


async def resolve_api_key(store: TurnStore, raw_key: str) -> "Principal | None":
    """The key's principal; None for an unknown, revoked or expired key. Raises 401 with the
    SPEC's messages when the key is fine but its user is inactive or no longer a member."""
    from app.auth.principal import Principal

    prefix = split_prefix(raw_key)
    if prefix is None:
        return None
    key = await store.find_api_key(prefix)
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
        # At most one write a minute per key, not one per request; its own short write, so
        # no transaction stays open while the request's body is read.
        await store.record_key_use(key.id, now, now - LAST_USED_RESOLUTION)
    return Principal(
        kind="api_key",
        team_id=key.team_id,
        user_id=key.user_id,
        user_email=key.email,
        role=Role(key.role),
        read_only=key.read_only,
        credential_id=f"api_key:{key.id}",
    )
