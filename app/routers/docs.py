"""Swagger UI at ``/docs``, served from this service (no CDN: it works offline and behind strict
networks). The Swagger UI 5 bundle comes from the pinned ``fastapi-swagger`` package's resources.

Both pages carry a Content-Security-Policy that admits their one inline script by a nonce made
per response (``app.security_headers.docs_csp``) and are never framed. Swagger UI does not
persist authorization: a token or key typed into Authorize lives in the page's memory only,
never in the browser's storage where any script of this origin could read it later.
"""

import secrets
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse

from app.auth.scopes import INTERACT_SCOPE
from app.errors import NotFound
from app.security_headers import FRAME_DENIAL, docs_csp
from app.services.admin_oauth import DOCS_REDIRECT_PATH

router = APIRouter(include_in_schema=False)

ASSETS = resources.files("fastapi_swagger") / "resources"
ASSET_NAMES = frozenset({"swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"})


def _with_script_nonce(page: HTMLResponse) -> HTMLResponse:
    """The page with its inline ``<script>`` admitted by a fresh nonce (the bundle's
    ``<script src=...>`` comes from 'self') and the headers that go with it."""
    nonce = secrets.token_urlsafe(16)
    html = bytes(page.body).decode().replace("<script>", f'<script nonce="{nonce}">')
    headers = {"Content-Security-Policy": docs_csp(nonce), **FRAME_DENIAL, "Cache-Control": "no-store"}
    return HTMLResponse(html, status_code=page.status_code, headers=headers)


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    page = get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/docs/assets/swagger-ui.css",
        swagger_favicon_url=f"{root}/docs/assets/favicon-32x32.png",
        # validatorUrl: no badge fetched from validator.swagger.io (the CSP would refuse it anyway).
        swagger_ui_parameters={"persistAuthorization": False, "displayRequestDuration": True, "validatorUrl": None},
        # The Authorize button's OAuth2 flow: authorization code with PKCE (S256), as the
        # server requires, for the public client CHATBOTS_DOCS_OAUTH_CLIENT_ID registered with
        # this page's redirect URI (the demo registers it: app.services.admin_oauth).
        oauth2_redirect_url=f"{root}{DOCS_REDIRECT_PATH}",
        init_oauth={
            "clientId": request.app.state.settings.docs_oauth_client_id,
            "usePkceWithAuthorizationCodeGrant": True,
            "scopes": INTERACT_SCOPE,
        },
    )
    return _with_script_nonce(page)


@router.get(DOCS_REDIRECT_PATH)
async def swagger_ui_oauth2_redirect() -> HTMLResponse:
    """Where the authorization server sends the browser back to /docs with the code."""
    return _with_script_nonce(get_swagger_ui_oauth2_redirect_html())


@router.get("/docs/assets/{name}")
async def swagger_asset(name: str) -> FileResponse:
    if name not in ASSET_NAMES:
        raise NotFound()
    with resources.as_file(ASSETS / name) as path:
        return FileResponse(path, headers={"Cache-Control": "public, max-age=86400"})
