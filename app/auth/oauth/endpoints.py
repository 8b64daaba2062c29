"""Token revocation (RFC 7009) and introspection (RFC 7662).

Revoking either secret of a grant ends the grant: the whole family (access and refresh
tokens) is revoked, so a client that logs a user out leaves nothing usable behind. A public
client revokes its own tokens with its ``client_id`` alone (it has no secret; the token itself
is the proof), a confidential one authenticates with its secret.

Introspection is for resource servers acting for a team: any confidential client of the token's
team (or the client the token was issued to) may introspect it; for anyone else the token is
simply ``{"active": false}``, so introspection cannot be used to probe other teams' tokens.
"""

from typing import TYPE_CHECKING, Any

from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint

from app.auth.oauth.records import SECRET_AUTH_METHODS, TOKEN_AUTH_METHODS, Client, Token
from app.auth.oauth.tokens import find_token, revoke_family
from app.models import OAuthClient, User

if TYPE_CHECKING:
    from app.auth.oauth.server import OAuthServer


def _query(server: "OAuthServer", secret: str, hint: str | None) -> Token | None:
    kinds = (True, False) if hint == "refresh_token" else (False, True)
    for refresh in kinds:
        if (row := find_token(server.db, secret, refresh=refresh)) is not None:
            return Token(row, refresh=refresh, now=server.now)
    return None


class Revocation(RevocationEndpoint):
    CLIENT_AUTH_METHODS = TOKEN_AUTH_METHODS
    server: "OAuthServer"

    def query_token(self, token_string: str, token_type_hint: str | None) -> Token | None:
        return _query(self.server, token_string, token_type_hint)

    def revoke_token(self, token: Token, request: Any) -> None:
        revoke_family(self.server.db, token.row.family_id, self.server.now)


class Introspection(IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = list(SECRET_AUTH_METHODS)
    server: "OAuthServer"

    def query_token(self, token_string: str, token_type_hint: str | None) -> Token | None:
        return _query(self.server, token_string, token_type_hint)

    def check_permission(self, token: Token, client: Client, request: Any) -> bool:
        row = token.row
        return row.client_id == client.row.id or (client.row.team_id is not None and client.row.team_id == row.team_id)

    def introspect_token(self, token: Token) -> dict[str, Any]:
        db, row = self.server.db, token.row
        client = db.get(OAuthClient, row.client_id)
        user = db.get(User, row.user_id) if row.user_id is not None else None
        payload: dict[str, Any] = {
            "active": True,
            "scope": row.scope,
            "client_id": client.client_id if client else None,
            "token_type": "refresh_token" if token.refresh else "Bearer",
            "exp": int(token.expires_at.timestamp()),
            "iat": int(row.issued_at.timestamp()),
            "team_id": row.team_id,
        }
        if user is not None:
            payload |= {"sub": str(user.id), "username": user.email}
        return payload
