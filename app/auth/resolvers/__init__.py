"""One resolver per credential kind: ``resolve(store, raw, context) -> Principal | None``.

None means the credential is not valid (unknown, revoked, expired): a 401 ``Invalid token.``.
A resolver raises ``NotAuthenticated`` for the SPEC's other 401 messages and
``PermissionDenied`` for a valid credential used where it may not be (a 403).
"""

from collections.abc import Awaitable, Callable, Hashable
from typing import TypeVar

from app.auth.principal import CredentialContext, CredentialKind, Principal
from app.auth.scopes import ALL_SCOPES
from app.errors import NotAuthenticated
from app.models import Role
from app.stores.base import TurnStore

Resolver = Callable[[TurnStore, str, CredentialContext], Awaitable[Principal | None]]
T = TypeVar("T")


async def remembered(
    context: CredentialContext | None, key: Hashable, lookup: Callable[[], Awaitable[T | None]]
) -> T | None:
    """``lookup()``'s record, from the process's memory of lookups when the request has one
    (``app.auth.cache``: the record is remembered, the resolver still decides on it)."""
    cache = context.cache if context is not None else None
    return await cache.get_or_load(key, lookup) if cache is not None else await lookup()

USER_INACTIVE = "User inactive or deleted."
NOT_A_MEMBER = "Incorrect authentication credentials."


def user_principal(
    kind: CredentialKind,
    credential_id: str,
    *,
    team_id: int,
    user_id: int,
    email: str,
    is_active: bool,
    role: str | None,
    read_only: bool = False,
    scopes: frozenset[str] = ALL_SCOPES,
) -> Principal:
    """The principal of a valid credential of a user, who must still be active and a member of
    the credential's team (``role`` None: no longer one), else the SPEC's 401s (§4 table)."""
    if not is_active:
        raise NotAuthenticated(USER_INACTIVE)
    if role is None:
        raise NotAuthenticated(NOT_A_MEMBER)
    return Principal(
        kind=kind, credential_id=credential_id, team_id=team_id, scopes=scopes, user_id=user_id,
        user_email=email, role=Role(role), read_only=read_only,
    )  # fmt: skip
