"""The three grants (SPEC §4.4), each closing one of Authlib's defaults that a production server
must not keep (ARCHITECTURE.md, "Authlib traps"):

- PKCE: Authlib's ``CodeChallenge`` defaults to ``plain`` and forces PKCE on public clients
  only. ``S256Required`` refuses a missing challenge, ``plain`` and a missing verifier for every
  client, confidential ones too (RFC 9700 §2.1.1), and compares in constant time.
- Codes: Authlib deletes a code *after* issuing tokens, so two concurrent redemptions could
  both succeed. ``query_authorization_code`` claims the code with one conditional ``UPDATE``
  (unused, unexpired, this client); the loser, and any later replay, is refused and the tokens
  the code already issued are revoked.
- Refresh: Authlib issues no new refresh token by default. ``RotatingRefreshGrant`` issues a new
  pair of the same family on every use, claims the presented token atomically, and treats a
  rotated token presented again (or lost in a race) as theft: the whole family is revoked.
- Client credentials: only a team's confidential client (``Client.check_grant_type``); the
  token acts for the team without a user, on the client's chatbots only (the resolver reads
  them from the client), with the client's scopes when none are asked for.
"""

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.errors import InvalidRequestError, InvalidScopeError
from authlib.oauth2.rfc7636 import CodeChallenge, create_s256_code_challenge
from sqlalchemy import select, update

from app.auth.oauth.records import SECRET_AUTH_METHODS, TOKEN_AUTH_METHODS, Code, GrantOwner, Token
from app.auth.oauth.tokens import CODE_PREFIX, find_token, is_active_member, new_secret, revoke_code_tokens, revoke_family
from app.crypto import constant_time_equal, sha256_hex
from app.models import OAuthAuthorizationCode

if TYPE_CHECKING:
    from app.auth.oauth.server import OAuthServer

_C = OAuthAuthorizationCode.__table__


def _s256_matches(verifier: str, challenge: str) -> bool:
    return constant_time_equal(create_s256_code_challenge(verifier), challenge)


class S256Required(CodeChallenge):
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    CODE_CHALLENGE_METHODS = {"S256": _s256_matches}

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: missing 'code_challenge'.")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("PKCE requires 'code_challenge_method=S256'.")
        super().validate_code_challenge(grant, redirect_uri)

    def validate_code_verifier(self, grant: Any, result: Any) -> None:
        if not grant.request.form.get("code_verifier"):
            raise InvalidRequestError("Missing 'code_verifier'.")
        super().validate_code_verifier(grant, result)


class _ServerGrant:
    server: "OAuthServer"


class AuthorizationCodeGrant(_ServerGrant, grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = TOKEN_AUTH_METHODS

    def generate_authorization_code(self) -> str:
        return new_secret(CODE_PREFIX)

    def save_authorization_code(self, code: str, request: Any) -> None:
        owner: GrantOwner = request.user
        server, data = self.server, request.payload.data
        server.db.add(
            OAuthAuthorizationCode(
                code_hash=sha256_hex(code),
                client_id=request.client.row.id,
                user_id=owner.user_id,
                team_id=owner.team_id,
                redirect_uri=request.payload.redirect_uri or "",
                scope=request.scope or "",
                code_challenge=data["code_challenge"],
                code_challenge_method=data["code_challenge_method"],
                created_at=server.now,
                expires_at=server.now + timedelta(seconds=server.settings.oauth_authorization_code_seconds),
            )
        )
        server.db.flush()

    def query_authorization_code(self, code: str, client: Any) -> Code | None:
        db, now, code_hash = self.server.db, self.server.now, sha256_hex(code)
        claimed = db.execute(
            update(_C)
            .where(_C.c.code_hash == code_hash, _C.c.client_id == client.row.id,
                   _C.c.used_at.is_(None), _C.c.expires_at > now)
            .values(used_at=now)
        ).rowcount  # fmt: skip
        row = db.scalar(select(OAuthAuthorizationCode).where(OAuthAuthorizationCode.code_hash == code_hash))
        if claimed == 1 and row is not None:
            return Code(row)
        if row is not None and row.used_at is not None:
            revoke_code_tokens(db, row.id, now)
        return None

    def delete_authorization_code(self, authorization_code: Code) -> None:
        """Nothing left to do: the code was spent when it was claimed, and the row stays so
        that a replay is recognised (and revokes what the code issued)."""

    def authenticate_user(self, authorization_code: Code) -> GrantOwner | None:
        row = authorization_code.row
        if not is_active_member(self.server.db, row.user_id, row.team_id):
            return None
        return GrantOwner(row.user_id, row.team_id)


class RotatingRefreshGrant(_ServerGrant, grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = TOKEN_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> Token | None:
        db, now, client = self.server.db, self.server.now, self.request.client
        row = find_token(db, refresh_token, refresh=True)
        if row is None or row.client_id != client.row.id or row.revoked_at is not None:
            return None
        if row.refreshed_at is not None:  # a rotated token presented again: stolen
            revoke_family(db, row.family_id, now)
            return None
        if row.refresh_expires_at is None or row.refresh_expires_at <= now:
            return None
        table = type(row).__table__
        claimed = db.execute(
            update(table)
            .where(table.c.id == row.id, table.c.refreshed_at.is_(None), table.c.revoked_at.is_(None))
            .values(refreshed_at=now)
        ).rowcount
        if claimed != 1:  # a concurrent use of the same token won: one of the two is a thief
            revoke_family(db, row.family_id, now)
            return None
        return Token(row, refresh=True, now=now)

    def authenticate_user(self, refresh_token: Token) -> GrantOwner | None:
        row = refresh_token.row
        if row.user_id is None or not is_active_member(self.server.db, row.user_id, row.team_id):
            return None
        return GrantOwner(row.user_id, row.team_id)

    def revoke_old_credential(self, refresh_token: Token) -> None:
        """Nothing left to do: the token was marked rotated when it was claimed."""


class ClientCredentialsGrant(_ServerGrant, grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = list(SECRET_AUTH_METHODS)

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        scope = self.client.get_allowed_scope(self.request.payload.scope)
        if scope is None:
            raise InvalidScopeError()
        token = self.generate_token(scope=scope, include_refresh_token=False)
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER
