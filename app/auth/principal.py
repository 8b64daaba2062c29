"""The principal every credential resolves to, and the one dependency that resolves it (SPEC §4).

Order: ``Authorization: Bearer`` (OAuth access token first, then API key) → ``X-api-key`` →
``X-Embed-Key`` → ``sessionid`` cookie. Every credential presented is checked, so an invalid one is
a 401 even when another valid one comes with it. Resolvers for the schemes that arrive in later
issues plug into ``_RESOLVERS`` without changing the routers.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Literal

from fastapi import Depends, Request
from app.auth.api_key_auth import resolve_api_key
from app.errors import NotAuthenticated, PermissionDenied
from app.models import Role
from app.stores.base import TurnStore

INTERACT_SCOPE = "chatbots:interact"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
INVALID_TOKEN = "Invalid token."
DUPLICATE_CREDENTIAL = "Credential header sent more than once."
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "x-embed-key")

CredentialKind = Literal["api_key", "oauth", "session", "embed_key"]


@dataclass(frozen=True)
class Principal:
    kind: CredentialKind
    team_id: int
    user_id: int | None
    user_email: str | None
    role: Role | None
    # The scopes the credential carries. API keys carry all of them; OAuth tokens carry theirs.
    scopes: frozenset[str] = field(default_factory=frozenset)
    read_only: bool = False
    channel_id: int | None = None  # embed keys: the widget channel they are bound to
    credential_id: str = ""  # stable id of the credential, e.g. "api_key:12" (idempotency scope)

    def can(self, scope: str) -> bool:
        return self.kind != "oauth" or scope in self.scopes


Resolver = Callable[[TurnStore, str], Awaitable[Principal | None]]


async def _resolve_bearer(store: TurnStore, token: str) -> Principal | None:
    # OAuth access tokens are tried first once the authorization server lands; then API keys.
    return await resolve_api_key(store, token)


def _bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


def _presented(request: Request) -> list[tuple[str, Resolver]]:
    """The credentials a request presents, in the order of precedence.

    A credential header sent more than once is refused: ``headers.get`` sees only the first
    copy, while a proxy in front may judge another (or join them), and the two must never
    disagree about who the caller is.
    """
    if any(len(request.headers.getlist(name)) > 1 for name in CREDENTIAL_HEADERS):
        raise NotAuthenticated(DUPLICATE_CREDENTIAL)
    found: list[tuple[str, Resolver]] = []
    if (token := _bearer_token(request)) is not None:
        found.append((token, _resolve_bearer))
    if (key := request.headers.get("x-api-key")) is not None:
        found.append((key.strip(), resolve_api_key))
    if (embed := request.headers.get("x-embed-key")) is not None:
        found.append((embed.strip(), _unsupported))
    return found


async def _unsupported(_: TurnStore, __: str) -> Principal | None:
    return None  # embed keys are resolved by a later issue: until then, not a valid credential


async def authenticate(request: Request) -> Principal:
    """Resolve the presented credentials. No transaction is left open: the request's body is
    read after this, and a client may send it slowly."""
    store: TurnStore = request.app.state.runtime.store
    presented = _presented(request)
    if not presented:
        raise NotAuthenticated()
    principals = []
    for raw, resolve in presented:
        principal = await resolve(store, raw) if raw else None
        if principal is None:
            raise NotAuthenticated(INVALID_TOKEN)
        principals.append(principal)
    principal = principals[0]
    if principal.read_only and request.method not in SAFE_METHODS:
        raise PermissionDenied()
    return principal


PrincipalDep = Annotated[Principal, Depends(authenticate)]


def require_interact(principal: Principal) -> None:
    """The three Chatbots v1 endpoints need ``chatbots:interact`` (OAuth) and a writable key."""
    if principal.read_only or not principal.can(INTERACT_SCOPE):
        raise PermissionDenied()
