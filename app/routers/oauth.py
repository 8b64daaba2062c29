"""The OAuth2 server's machine endpoints (SPEC §4.4): token, revocation (RFC 7009),
introspection (RFC 7662) and the metadata document (RFC 8414). The authorization endpoint, a
page for people, is ``app.routers.oauth_consent``.

Bodies are ``application/x-www-form-urlencoded`` (RFC 6749 §3.2), read here with the service's
size and time limits; every answer is JSON with ``Cache-Control: no-store`` and
``Pragma: no-cache`` (RFC 6749 §5.1), errors in OAuth's ``{"error", "error_description"}`` form.
"""

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.auth.oauth.metadata import INTROSPECT_PATH, REVOKE_PATH, TOKEN_PATH, server_metadata
from app.auth.oauth.server import FormRequest, OAuthAnswer, OAuthServer, run_oauth
from app.auth.rate_limit_http import client_ip, rate_limiter, report
from app.auth.resolvers import oauth as oauth_credential
from app.routers.body import read_body
from app.routers.deps import SessionmakerDep, SettingsDep
from app.routers.oauth_openapi import (FORM_TYPE, INTROSPECT_OPERATION, METADATA_OPERATION, REVOKE_OPERATION,
                                       TOKEN_OPERATION)  # fmt: skip

router = APIRouter()
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def oauth_response(answer: OAuthAnswer) -> Response:
    headers = dict(answer.headers) | NO_STORE
    if answer.status in (301, 302, 303, 307):
        return Response(status_code=answer.status, headers=headers)
    headers.pop("Content-Type", None)
    return JSONResponse(answer.body, status_code=answer.status, headers=headers)


def invalid_request(description: str) -> Response:
    return JSONResponse({"error": "invalid_request", "error_description": description}, 400, headers=NO_STORE)


async def read_form(request: Request, limit: int, timeout: float) -> list[tuple[str, str]] | str:
    """The form's fields, or why the body is not an acceptable form."""
    raw = await read_body(request, limit, timeout)
    mime = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if mime != FORM_TYPE:
        return f"The body must be {FORM_TYPE}."
    try:
        pairs = parse_qsl(raw.decode(), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        return "The body is not valid UTF-8."
    if any("\x00" in k or "\x00" in v for k, v in pairs):
        return "Null characters are not allowed."
    return pairs


async def _exchange(
    request: Request, sessions: SessionmakerDep, settings: SettingsDep, work: Callable[[OAuthServer, FormRequest], Any]
) -> Response:
    form = await read_form(request, settings.max_body_bytes, settings.body_timeout_seconds)
    if isinstance(form, str):
        return invalid_request(form)
    oauth_request = FormRequest(request.method, str(request.url), request.headers, form, form=True)
    credentials = request.app.state.runtime.credentials
    answer = await run_oauth(
        sessions, settings, lambda server: work(server, oauth_request),
        on_revoked=lambda: credentials.forget_kind(oauth_credential.CACHE_KIND),
    )  # fmt: skip
    return oauth_response(answer)


@router.post(TOKEN_PATH, **TOKEN_OPERATION)
@router.post(TOKEN_PATH.rstrip("/"), include_in_schema=False)
async def token(request: Request, sessions: SessionmakerDep, settings: SettingsDep) -> Response:
    # Counted per client address before anything is read (SPEC §4.7): 429 over the limit.
    report(request, await rate_limiter(request).hit_token_endpoint(client_ip(request)))
    return await _exchange(request, sessions, settings, lambda server, r: server.create_token_response(r))


@router.post(REVOKE_PATH, **REVOKE_OPERATION)
@router.post(REVOKE_PATH.rstrip("/"), include_in_schema=False)
async def revoke_token(request: Request, sessions: SessionmakerDep, settings: SettingsDep) -> Response:
    return await _exchange(
        request, sessions, settings, lambda server, r: server.create_endpoint_response("revocation", r)
    )


@router.post(INTROSPECT_PATH, **INTROSPECT_OPERATION)
@router.post(INTROSPECT_PATH.rstrip("/"), include_in_schema=False)
async def introspect(request: Request, sessions: SessionmakerDep, settings: SettingsDep) -> Response:
    return await _exchange(
        request, sessions, settings, lambda server, r: server.create_endpoint_response("introspection", r)
    )


@router.get("/.well-known/oauth-authorization-server", **METADATA_OPERATION)
async def metadata(request: Request) -> JSONResponse:
    issuer = str(request.base_url).rstrip("/")
    return JSONResponse(server_metadata(issuer), headers={"Cache-Control": "public, max-age=3600"})
