"""How the OAuth2 server's machine endpoints appear in the OpenAPI document (RFC 6749 §4–5,
RFC 7009, RFC 7662, RFC 8414), so that a client generator or a fuzzer sees their form bodies
and every answer they give. The authorization endpoint and the pages are for browsers and stay
out of the document.

Client authentication is the RFC's own (HTTP Basic, or ``client_id``/``client_secret`` in the
form), not one of the API's five schemes, so these operations declare no ``security``.
"""

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.routers.openapi_docs import error_responses

OAUTH_TAG = "OAuth2"
FORM_TYPE = "application/x-www-form-urlencoded"


class OAuthErrorResponse(BaseModel):
    """RFC 6749 §5.2."""

    error: str = Field(description="`invalid_request`, `invalid_client`, `invalid_grant`, `unsupported_grant_type`, ...")
    error_description: str | None = None


class TokenRequest(BaseModel):
    grant_type: Literal["authorization_code", "refresh_token", "client_credentials"]
    code: str | None = Field(default=None, description="authorization_code: the code the redirect carried.")
    redirect_uri: str | None = Field(default=None, description="authorization_code: as in the authorization request.")
    code_verifier: str | None = Field(default=None, description="authorization_code: the PKCE verifier (S256).")
    refresh_token: str | None = Field(default=None, description="refresh_token: the current refresh token.")
    scope: str | None = Field(default=None, description="Space-separated scopes (default: the client's).")
    client_id: str | None = Field(default=None, description="A public client's id, or a client not using Basic.")
    client_secret: str | None = Field(default=None, description="A confidential client not using Basic.")


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = Field(description="`Bearer`.")
    expires_in: int
    scope: str
    refresh_token: str | None = Field(default=None, description="Not for client_credentials.")


class TokenActionRequest(BaseModel):
    token: str
    token_type_hint: Literal["access_token", "refresh_token"] | None = None
    client_id: str | None = None
    client_secret: str | None = None


class RevocationResponse(BaseModel):
    """RFC 7009 §2.2: an empty object, whether or not the token existed."""


class IntrospectionResponse(BaseModel):
    """RFC 7662 §2.2: ``{"active": false}`` for an unknown, expired or revoked token, or one the
    caller may not see; the rest only for an active token."""

    active: bool
    scope: str | None = None
    client_id: str | None = None
    token_type: str | None = None
    exp: int | None = None
    iat: int | None = None
    team_id: int | None = None
    sub: str | None = None
    username: str | None = None


class AuthorizationServerMetadata(BaseModel):
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    revocation_endpoint: str
    introspection_endpoint: str
    scopes_supported: list[str]
    response_types_supported: list[str]
    response_modes_supported: list[str]
    grant_types_supported: list[str]
    token_endpoint_auth_methods_supported: list[str]
    revocation_endpoint_auth_methods_supported: list[str]
    introspection_endpoint_auth_methods_supported: list[str]
    code_challenge_methods_supported: list[str]


FORM_SCHEMAS = (TokenRequest, TokenActionRequest)
_OAUTH_ERRORS = {
    400: "The form is not a valid request (`invalid_request`, `invalid_grant`, `unsupported_grant_type`, ...).",
    401: "The client failed to authenticate (`invalid_client`).",
}


def _form_operation(form: type[BaseModel], ok: type[BaseModel], *extra_statuses: int) -> dict[str, Any]:
    responses: dict[int | str, dict[str, Any]] = {200: {"model": ok, "description": "Done."}}
    responses |= {code: {"model": OAuthErrorResponse, "description": text} for code, text in _OAUTH_ERRORS.items()}
    responses |= error_responses(405, 408, 413, 503, *extra_statuses)
    ref = {"$ref": f"#/components/schemas/{form.__name__}"}
    return {
        "tags": [OAUTH_TAG],
        "responses": responses,
        "openapi_extra": {"requestBody": {"required": True, "content": {FORM_TYPE: {"schema": ref}}}},
    }


TOKEN_OPERATION = _form_operation(TokenRequest, TokenResponse, 429) | {"summary": "Issue an access token", "operation_id": "oauth_token"}
REVOKE_OPERATION = _form_operation(TokenActionRequest, RevocationResponse) | {"summary": "Revoke a token", "operation_id": "oauth_revoke_token"}
INTROSPECT_OPERATION = _form_operation(TokenActionRequest, IntrospectionResponse) | {"summary": "Introspect a token", "operation_id": "oauth_introspect"}
METADATA_OPERATION: dict[str, Any] = {
    "tags": [OAUTH_TAG],
    "summary": "The authorization server's metadata",
    "operation_id": "oauth_metadata",
    "responses": {200: {"model": AuthorizationServerMetadata, "description": "RFC 8414."}, **error_responses(405)},
}
