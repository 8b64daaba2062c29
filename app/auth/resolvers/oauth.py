"""OAuth access tokens (``Authorization: Bearer``, tried before API keys; SPEC §4.4).

One indexed lookup (the token's hash, unique) joined to its client (primary key) and, for a
user grant, the user and the user's membership in the token's team, so the membership is
re-checked with the token without a second round trip; remembered by the process for
``CHATBOTS_AUTH_CACHE_SECONDS`` like every credential lookup (``app.auth.cache``): a revocation
through this process (code replay, refresh reuse, /o/revoke_token/) forgets every remembered
token at once; one made elsewhere (the CLI, another replica) takes effect within that bound. A client-credentials token has no
user: it acts for its client's team, on the client's chatbots only.
"""

from collections.abc import Mapping
from typing import Any

from sqlalchemy import and_, bindparam, select

from app.auth.oauth.tokens import ACCESS_TOKEN_PREFIX
from app.auth.principal import CredentialContext, Principal
from app.auth.resolvers import remembered, user_principal
from app.auth.scopes import ALL_SCOPES
from app.crypto import sha256_hex
from app.db import utcnow
from app.models import Membership, OAuthClient, OAuthToken, User
from app.stores.base import TurnStore

_T, _C, _U, _M = OAuthToken.__table__, OAuthClient.__table__, User.__table__, Membership.__table__

CACHE_KIND = "oauth"


def cache_key(raw: str) -> tuple[str, str]:
    """The token's entry in the process's memory of lookups (``app.auth.cache``): remembered
    like a key's, its expiry and revocation read from the remembered row on every request."""
    return (CACHE_KIND, sha256_hex(raw))


FIND_ACCESS_TOKEN = (
    select(
        _T.c.id, _T.c.team_id, _T.c.user_id, _T.c.scope, _T.c.access_token_hash,
        _T.c.access_expires_at, _T.c.revoked_at, _C.c.chatbot_ids, _U.c.email, _U.c.is_active, _M.c.role,
    )  # fmt: skip
    .join(_C, _C.c.id == _T.c.client_id)
    .outerjoin(_U, _U.c.id == _T.c.user_id)
    .outerjoin(_M, and_(_M.c.user_id == _T.c.user_id, _M.c.team_id == _T.c.team_id))
    .where(_T.c.access_token_hash == bindparam("p_hash"))
)


async def resolve(store: TurnStore, raw: str, context: CredentialContext | None = None) -> Principal | None:
    """The token's principal; None for anything that is not a live access token (an API key
    then gets its turn). Raises 401 with the SPEC's messages when the token is fine but its
    user is inactive or no longer a member of the token's team."""
    if not raw.startswith(ACCESS_TOKEN_PREFIX):
        return None  # not an access token this server issued: no round trip
    presented = sha256_hex(raw)

    async def lookup() -> Mapping[str, Any] | None:
        async with store.statements(read_only=True) as run:
            return await run.first(FIND_ACCESS_TOKEN, {"p_hash": presented})

    row = await remembered(context, cache_key(raw), lookup)
    if (
        row is None
        or row["revoked_at"] is not None
        or row["access_expires_at"] <= utcnow()
    ):
        return None
    scopes = frozenset(row["scope"].split()) & ALL_SCOPES
    credential_id = f"oauth_token:{row['id']}"
    if row["user_id"] is None:  # client credentials: the team's machine, on its chatbots
        chatbot_ids = frozenset(int(i) for i in row["chatbot_ids"] or ())
        return Principal(kind="oauth", credential_id=credential_id, team_id=row["team_id"], scopes=scopes,
                         chatbot_ids=chatbot_ids)  # fmt: skip
    return user_principal(
        "oauth", credential_id, team_id=row["team_id"], user_id=row["user_id"], email=row["email"],
        is_active=row["is_active"], role=row["role"], scopes=scopes,
    )  # fmt: skip
