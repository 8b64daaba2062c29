"""The OAuth rows (``app.models.auth``) as Authlib's mixins see them.

Decisions a reviewer looks for live here: redirect URIs match exactly (string equality, no
normalisation, so an extra slash, a query or another host is refused); a public client may
only authenticate with ``none`` and a confidential one only with its secret (compared as
SHA-256 digests in constant time); a client asking for no scope gets all its allowed scopes,
and asking for one it is not allowed is an ``invalid_scope`` error rather than a silent cut.
"""

from dataclasses import dataclass
from datetime import datetime

from authlib.oauth2.rfc6749 import AuthorizationCodeMixin, ClientMixin, TokenMixin
from authlib.oauth2.rfc6749.util import list_to_scope, scope_to_list

from app.crypto import constant_time_equal, sha256_hex
from app.models import OAuthAuthorizationCode, OAuthClient, OAuthToken

SECRET_AUTH_METHODS = ("client_secret_basic", "client_secret_post")
# Every client authentication the token endpoints accept: a secret, or none (a public client).
TOKEN_AUTH_METHODS = [*SECRET_AUTH_METHODS, "none"]


class Client(ClientMixin):
    def __init__(self, row: OAuthClient) -> None:
        self.row = row

    @property
    def is_public(self) -> bool:
        return self.row.client_secret_hash is None

    def get_client_id(self) -> str:
        return self.row.client_id

    def get_default_redirect_uri(self) -> str | None:
        # With several registered URIs the request must name one: guessing would be a choice
        # the client did not make.
        uris = self.row.redirect_uris
        return uris[0] if len(uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        allowed = list(self.row.scopes)
        if not scope:
            return list_to_scope(allowed)
        requested = scope_to_list(scope)
        if any(s not in allowed for s in requested):
            return None
        return list_to_scope(requested)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.row.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        stored = self.row.client_secret_hash
        return stored is not None and constant_time_equal(sha256_hex(client_secret), stored)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "none" if self.is_public else method in SECRET_AUTH_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.row.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        if grant_type == "client_credentials" and (self.is_public or self.row.team_id is None):
            return False  # a machine token acts for a team: only a team's confidential client
        return grant_type in self.row.grant_types


class Code(AuthorizationCodeMixin):
    def __init__(self, row: OAuthAuthorizationCode) -> None:
        self.row = row

    def get_redirect_uri(self) -> str | None:
        return self.row.redirect_uri or None  # "": the request named none (the client has one)

    def get_scope(self) -> str:
        return self.row.scope

    @property
    def code_challenge(self) -> str:
        return self.row.code_challenge

    @property
    def code_challenge_method(self) -> str:
        return self.row.code_challenge_method


class Token(TokenMixin):
    """A token row seen through one of its two secrets: the access token or the refresh token."""

    def __init__(self, row: OAuthToken, *, refresh: bool, now: datetime) -> None:
        self.row, self.refresh, self.now = row, refresh, now

    def check_client(self, client: Client) -> bool:
        return self.row.client_id == client.row.id

    def get_scope(self) -> str:
        return self.row.scope

    def get_expires_in(self) -> int:
        return max(0, int((self.expires_at - self.now).total_seconds()))

    @property
    def expires_at(self) -> datetime:
        if self.refresh and self.row.refresh_expires_at is not None:
            return self.row.refresh_expires_at
        return self.row.access_expires_at

    def is_expired(self) -> bool:
        return self.expires_at <= self.now

    def is_revoked(self) -> bool:
        # A rotated refresh token is spent: its access token lives on until it expires.
        return self.row.revoked_at is not None or (self.refresh and self.row.refreshed_at is not None)


@dataclass(frozen=True, slots=True)
class GrantOwner:
    """Who a user grant acts for: a user within the team chosen at consent."""

    user_id: int
    team_id: int
