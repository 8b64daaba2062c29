"""The ``AuthorizationServer`` and how an endpoint runs it: the HTTP request read beforehand
(``FormRequest``), Authlib run in ``AsyncSession.run_sync``, its answer handed back as an
``OAuthAnswer`` for the router to turn into a response."""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from authlib.oauth2.rfc6749 import AuthorizationServer, OAuth2Request
from authlib.oauth2.rfc6749.requests import OAuth2Payload
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from app.auth.oauth.endpoints import Introspection, Revocation
from app.auth.oauth.grants import AuthorizationCodeGrant, ClientCredentialsGrant, RotatingRefreshGrant, S256Required
from app.auth.oauth.records import Client, GrantOwner
from app.auth.oauth.tokens import REVOKED, TokenGenerator, new_family_id, store_token
from app.auth.scopes import SCOPES
from app.config import Settings
from app.db import utcnow
from app.models import OAuthClient

T = TypeVar("T")
Pairs = Sequence[tuple[str, str]]


class _Payload(OAuth2Payload):
    """The request's OAuth parameters, every value kept: Authlib refuses repeated ones."""

    def __init__(self, pairs: Pairs) -> None:
        self._datalist: dict[str, list[str]] = {}
        for key, value in pairs:
            self._datalist.setdefault(key, []).append(value)
        self._data = {key: values[0] for key, values in self._datalist.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> dict[str, list[str]]:  # type: ignore[override]
        return self._datalist


class FormRequest(OAuth2Request):
    """An HTTP request already read by the async endpoint: the authorization endpoint's
    parameters are its query, the token endpoints' its form body.

    ``OAuth2Request.__init__`` is not called: its only work besides setting these attributes is
    refusing a non-https URL, and this process cannot judge that (TLS ends at the proxy in
    front; ``app.routers.browser.is_https`` is where the app reads it). Deployments serve over
    https; tests and local runs do not."""

    def __init__(self, method: str, uri: str, headers: Mapping[str, str], params: Pairs, *, form: bool) -> None:
        self.method, self.uri, self.headers = method, uri, headers
        self.payload = _Payload(params)
        self._args = self.payload.data if not form else {}
        self._form = self.payload.data if form else {}
        self.client = self.auth_method = self.user = None
        self.authorization_code = self.refresh_token = self.credential = None
        self._scope = None
        self._body = None

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


@dataclass(frozen=True, slots=True)
class OAuthAnswer:
    status: int
    body: Any  # a JSON object, or "" for a redirect
    headers: list[tuple[str, str]]


class OAuthServer(AuthorizationServer):
    """One per exchange, bound to its ``Session`` and its moment (``now``)."""

    def __init__(self, db: Session, settings: Settings, now: datetime) -> None:
        super().__init__(scopes_supported=list(SCOPES))
        self.db, self.settings, self.now = db, settings, now
        self.register_token_generator("default", TokenGenerator(settings))
        self.register_grant(AuthorizationCodeGrant, [S256Required(required=True)])
        self.register_grant(RotatingRefreshGrant)
        self.register_grant(ClientCredentialsGrant)
        self.register_endpoint(Revocation)
        self.register_endpoint(Introspection)

    def query_client(self, client_id: str) -> Client | None:
        row = self.db.scalar(
            select(OAuthClient).where(OAuthClient.client_id == client_id, OAuthClient.revoked_at.is_(None))
        )
        return Client(row) if row is not None else None

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        client: Client = request.client
        owner: GrantOwner | None = request.user
        previous = request.refresh_token
        code = request.authorization_code
        store_token(
            self.db,
            token,
            client_id=client.row.id,
            user_id=owner.user_id if owner else None,
            team_id=owner.team_id if owner else client.row.team_id,
            family_id=previous.row.family_id if previous is not None else new_family_id(),
            code_id=code.row.id if code is not None else None,
            settings=self.settings,
            now=self.now,
        )

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """No signal bus here: what a signal would trigger is done in the grants themselves."""

    def create_oauth2_request(self, request: FormRequest) -> FormRequest:
        return request

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> OAuthAnswer:
        return OAuthAnswer(status, body, list(headers))


async def run_oauth(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    work: Callable[[OAuthServer], T],
    on_revoked: Callable[[], None] | None = None,
) -> T:
    """Run ``work`` on a server bound to a new session, in one transaction committed afterwards
    (also when Authlib answered an error: a replay's revocations must stay). ``on_revoked``
    runs after the commit if the exchange revoked tokens (a code replay, a refresh token
    reused, a revocation request)."""
    async with sessionmaker() as session:
        now = utcnow()
        result = await session.run_sync(lambda db: work(OAuthServer(db, settings, now)))
        await session.commit()
        if on_revoked is not None and session.sync_session.info.pop(REVOKED, False):
            on_revoked()
        return result
