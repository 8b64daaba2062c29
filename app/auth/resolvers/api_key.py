"""API keys (``X-api-key``, or ``Authorization: Bearer`` when no OAuth token matches; SPEC §4.2)."""

from datetime import timedelta

from app.auth.api_keys import split_prefix
from app.auth.principal import CredentialContext, Principal
from app.auth.resolvers import remembered, user_principal
from app.crypto import constant_time_equal, sha256_hex
from app.db import utcnow
from app.stores.base import ApiKeyRecord, TurnStore

LAST_USED_RESOLUTION = timedelta(minutes=1)


async def resolve(store: TurnStore, raw_key: str, context: CredentialContext | None = None) -> Principal | None:
    """The key's principal; None for an unknown, revoked or expired key. Raises 401 with the
    SPEC's messages when the key is fine but its user is inactive or no longer a member."""
    prefix = split_prefix(raw_key)
    if prefix is None:
        return None
    # The key's use (last_used_at, at most one write a minute) is recorded by the same round
    # trip, and only if the presented key is valid: no transaction is left open for the body.
    now, presented = utcnow(), sha256_hex(raw_key)

    async def lookup() -> ApiKeyRecord | None:
        record = await store.use_api_key(prefix, presented, now, now - LAST_USED_RESOLUTION)
        # Only a record of this very key is remembered (a wrong secret under a known prefix
        # is looked up each time, and is refused below).
        return record if record is not None and constant_time_equal(presented, record.key_hash) else None

    key = await remembered(context, ("api_key", presented), lookup)
    if key is None:
        return None
    if (
        not constant_time_equal(presented, key.key_hash)
        or key.revoked_at is not None
        or (key.expires_at is not None and key.expires_at <= now)
    ):
        return None
    return user_principal(
        "api_key", f"api_key:{key.id}", team_id=key.team_id, user_id=key.user_id, email=key.email,
        is_active=key.is_active, role=key.role, read_only=key.read_only,
    )  # fmt: skip
