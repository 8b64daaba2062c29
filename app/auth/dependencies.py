"""The FastAPI side of authentication: one dependency class, ``Authenticator``, for every route.

The seed's security schemes are ``fastapi.security`` classes, so the OpenAPI document's
``securitySchemes`` and each operation's ``security`` come from the dependencies that really
read the credentials. Order (SPEC §4): ``Authorization: Bearer`` (an OAuth access token first,
then an API key) → ``X-api-key`` → ``X-Embed-Key`` → ``sessionid`` cookie. Every credential
presented is checked, so an invalid one is a 401 even when a valid one comes with it; the first
valid one is the principal. The session cookie is the exception: a browser sends it unasked
with every request to this site, so it counts as presented only when no header credential is
(a caller that chose a key or token is judged by it alone, and a stale or CSRF-less cookie
beside it does not break its calls, e.g. /docs used with an API key after a login).

Deny by default: an ``Authenticator`` admits only the credential kinds it names, and the
scopes of the ``Security(..., scopes=[...])`` that uses it.
"""

from collections.abc import Sequence
from typing import Annotated

from fastapi import Request, Security
from fastapi.dependencies.models import Dependant
from fastapi.security import (
    APIKeyCookie, APIKeyHeader, HTTPBearer, OAuth2AuthorizationCodeBearer, SecurityScopes,
)  # fmt: skip

from app.auth.oauth.metadata import AUTHORIZE_PATH, TOKEN_PATH
from app.auth.principal import CredentialContext, CredentialKind, Principal
from app.auth.rate_limit_http import guard_authentication
from app.auth.resolvers import Resolver, api_key, cookie, embed_key, oauth
from app.auth.scopes import INTERACT_SCOPE, SCOPES
from app.auth.web_sessions import SESSION_COOKIE
from app.errors import NotAuthenticated, PermissionDenied
from app.stores.base import TurnStore

INVALID_TOKEN = "Invalid token."
DUPLICATE_CREDENTIAL = "Credential header sent more than once."


def _single(request: Request, name: str) -> str | None:
    """The header's one value, stripped. A credential header sent more than once is refused:
    ``headers.get`` sees only the first copy, while a proxy in front may judge another (or join
    them), and the two must never disagree about who the caller is."""
    values = request.headers.getlist(name)
    if len(values) > 1:
        raise NotAuthenticated(DUPLICATE_CREDENTIAL)
    return values[0].strip() if values else None


class BearerToken(HTTPBearer):
    """``Authorization: Bearer <token>`` (``tokenAuth``): the token, "" when it is empty (an
    invalid credential, not an absent one), None for no header or another scheme."""

    async def __call__(self, request: Request) -> str | None:  # type: ignore[override]
        header = _single(request, "authorization")
        if header is None:
            return None
        scheme, _, token = header.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None


class HeaderKey(APIKeyHeader):
    """A credential header (``apiKeyAuth``, ``embedKeyAuth``): its value, "" if sent empty."""

    async def __call__(self, request: Request) -> str | None:  # type: ignore[override]
        return _single(request, self.model.name)


bearer_scheme = BearerToken(scheme_name="tokenAuth", auto_error=False)
api_key_scheme = HeaderKey(name="X-api-key", scheme_name="apiKeyAuth", auto_error=False)
# The OAuth2 scheme (SPEC §4.4) for the document and /docs' Authorize button. Its token comes in
# the same ``Authorization: Bearer`` header ``bearer_scheme`` reads, and ``_bearer`` tries it
# as an OAuth token first: the parameter is declared, never resolved twice.
oauth2_scheme = OAuth2AuthorizationCodeBearer(
    authorizationUrl=AUTHORIZE_PATH, tokenUrl=TOKEN_PATH, refreshUrl=TOKEN_PATH,
    scheme_name="OAuth2", scopes=SCOPES, auto_error=False,
)  # fmt: skip
embed_key_scheme = HeaderKey(name="X-Embed-Key", scheme_name="embedKeyAuth", auto_error=False)
# An empty ``sessionid`` (what a cleared cookie may leave behind) counts as no cookie.
session_cookie_scheme = APIKeyCookie(name=SESSION_COOKIE, scheme_name="cookieAuth", auto_error=False)


async def _bearer(store: TurnStore, raw: str, context: CredentialContext) -> Principal | None:
    principal = await oauth.resolve(store, raw, context)  # an OAuth access token first
    return principal if principal is not None else await api_key.resolve(store, raw, context)


def credential_context(request: Request) -> CredentialContext:
    return CredentialContext(
        method=request.method,
        headers=request.headers,
        cookies=request.cookies,
        cache=request.app.state.runtime.credentials,
    )


async def resolve_presented(
    request: Request, presented: Sequence[tuple[str, Resolver]]
) -> Principal:
    """Check every presented credential; the first one's principal."""
    if not presented:
        raise NotAuthenticated()
    store: TurnStore = request.app.state.runtime.store
    context = credential_context(request)
    principals = []
    for raw, resolve in presented:
        principal = await resolve(store, raw, context) if raw else None
        if principal is None:
            raise NotAuthenticated(INVALID_TOKEN)
        principals.append(principal)
    return principals[0]


class Authenticator:
    """A dependency that resolves the request's credentials to a ``Principal`` and admits it
    only if its kind is one of ``allowed_kinds`` and it carries the scopes the route asks for
    (``Security(authenticator, scopes=[...])``); a read-only credential only on safe methods.
    No transaction is left open: the request's body is read after this, and a client may send
    it slowly."""

    def __init__(self, *, allowed_kinds: frozenset[CredentialKind]) -> None:
        if not allowed_kinds:
            raise ValueError("an Authenticator admits at least one kind of credential")
        self.allowed_kinds = allowed_kinds

    async def __call__(
        self,
        request: Request,
        security_scopes: SecurityScopes,
        _oauth_token: Annotated[str | None, Security(oauth2_scheme)],
        bearer: Annotated[str | None, Security(bearer_scheme)],
        key: Annotated[str | None, Security(api_key_scheme)],
        embed: Annotated[str | None, Security(embed_key_scheme)],
        session_cookie: Annotated[str | None, Security(session_cookie_scheme)],
    ) -> Principal:
        presented: list[tuple[str, Resolver]] = []
        if bearer is not None:
            presented.append((bearer, _bearer))
        if key is not None:
            presented.append((key, api_key.resolve))
        if embed is not None:
            presented.append((embed, embed_key.resolve))
        if session_cookie is not None and not presented:  # ambient: only when alone (README)
            presented.append((session_cookie, cookie.resolve))
        async with guard_authentication(request):  # rate limit on failures (SPEC §4.7)
            principal = await resolve_presented(request, presented)
        if principal.kind not in self.allowed_kinds or not principal.allows(
            security_scopes.scopes, request.method
        ):
            raise PermissionDenied()
        request.state.principal = principal  # read by what answers for it (the widget's CORS)
        return principal


# What each documented scheme can resolve to (tokenAuth is the Bearer header: an OAuth token or
# an API key). The OpenAPI document offers a route only the schemes its Authenticator admits.
SCHEME_KINDS: dict[str, frozenset[CredentialKind]] = {
    "OAuth2": frozenset({"oauth"}),
    "tokenAuth": frozenset({"oauth", "api_key"}),
    "apiKeyAuth": frozenset({"api_key"}),
    "embedKeyAuth": frozenset({"embed_key"}),
    "cookieAuth": frozenset({"session"}),
}


def find_authenticator(dependant: Dependant) -> Authenticator | None:
    """The Authenticator among a route's dependencies (at any depth), if any."""
    for dependency in dependant.dependencies:
        if isinstance(dependency.call, Authenticator):
            return dependency.call
        if (found := find_authenticator(dependency)) is not None:
            return found
    return None


# The Chatbots v1 endpoints (SPEC §4 table). An embed key may only chat; trigger_bot and the
# delivery status also need a team role (checked by their routes).
CHAT_KINDS: frozenset[CredentialKind] = frozenset({"api_key", "oauth", "session", "embed_key"})
TEAM_KINDS: frozenset[CredentialKind] = frozenset({"api_key", "oauth", "session"})
chat_authenticator = Authenticator(allowed_kinds=CHAT_KINDS)
team_authenticator = Authenticator(allowed_kinds=TEAM_KINDS)

ChatPrincipal = Annotated[Principal, Security(chat_authenticator, scopes=[INTERACT_SCOPE])]
TeamPrincipal = Annotated[Principal, Security(team_authenticator, scopes=[INTERACT_SCOPE])]
