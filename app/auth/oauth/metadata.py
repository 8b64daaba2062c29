"""The authorization server's metadata document (RFC 8414)."""

from typing import Any

from app.auth.oauth.records import SECRET_AUTH_METHODS, TOKEN_AUTH_METHODS
from app.auth.scopes import SCOPES

AUTHORIZE_PATH = "/o/authorize/"
TOKEN_PATH = "/o/token/"
REVOKE_PATH = "/o/revoke_token/"
INTROSPECT_PATH = "/o/introspect/"


def server_metadata(issuer: str) -> dict[str, Any]:
    """``issuer``: this service's base URL as the client reached it (no trailing slash)."""
    return {
        "issuer": issuer,
        "authorization_endpoint": issuer + AUTHORIZE_PATH,
        "token_endpoint": issuer + TOKEN_PATH,
        "revocation_endpoint": issuer + REVOKE_PATH,
        "introspection_endpoint": issuer + INTROSPECT_PATH,
        "scopes_supported": list(SCOPES),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported": TOKEN_AUTH_METHODS,
        "revocation_endpoint_auth_methods_supported": TOKEN_AUTH_METHODS,
        "introspection_endpoint_auth_methods_supported": list(SECRET_AUTH_METHODS),
        "code_challenge_methods_supported": ["S256"],
    }
