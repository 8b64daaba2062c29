"""One resolver per credential kind: ``resolve(store, raw, context) -> Principal | None``.

None means the credential is not valid (unknown, revoked, expired): a 401 ``Invalid token.``.
A resolver raises ``NotAuthenticated`` for the SPEC's other 401 messages and
``PermissionDenied`` for a valid credential used where it may not be (a 403).
"""

from collections.abc import Awaitable, Callable

from app.auth.principal import CredentialContext, Principal
from app.stores.base import TurnStore

Resolver = Callable[[TurnStore, str, CredentialContext], Awaitable[Principal | None]]
