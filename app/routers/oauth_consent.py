"""``GET/POST /o/authorize/`` (SPEC §4.4): the consent page, for a logged-in browser.

Without a valid browser session the user is sent to ``/accounts/login?next=<this URL>`` and
comes back here. The page names the client, the scopes with their descriptions and the team
the grant will act in; its form posts back to the same URL (the OAuth parameters stay in the
query, and are validated again) with the CSRF token, and the answer is a redirect to the
client with ``code`` and ``state`` or ``error=access_denied``. A request that cannot be
redirected safely (unknown client, unregistered redirect URI) gets an HTML error page.
"""

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from app.auth.csrf import CSRF_COOKIE, CSRF_FORM_FIELD, csrf_failure, new_csrf_token
from app.auth.oauth.consent import ConsentPage, Refused, consent_page, decide
from app.auth.oauth.metadata import AUTHORIZE_PATH
from app.auth.oauth.server import FormRequest, OAuthAnswer, run_oauth
from app.auth.web_sessions import BrowserSession
from app.routers.browser import LOGIN_PATH, logged_in, set_cookie
from app.routers.deps import SessionmakerDep, SettingsDep, StoreDep
from app.routers.oauth import read_form
from app.routers.templating import PAGE_HEADERS, templates

router = APIRouter(include_in_schema=False)


def _here(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def _to_login(request: Request) -> Response:
    return RedirectResponse(f"{LOGIN_PATH}?{urlencode({'next': _here(request)})}", status_code=302, headers=PAGE_HEADERS)


def _page(request: Request, name: str, status: int, **context: Any) -> Response:
    return templates.TemplateResponse(request, name, context, status_code=status, headers=PAGE_HEADERS)


def _render(request: Request, outcome: Any, browser: BrowserSession, csrf_token: str) -> Response:
    if isinstance(outcome, OAuthAnswer):  # a redirect to the client (code, or an error)
        location = dict(outcome.headers).get("Location")
        if location is None:
            message = outcome.body.get("error_description") or outcome.body.get("error", "Invalid request.")
            return _page(request, "oauth/error.html", 400, message=message)
        return RedirectResponse(location, status_code=302, headers=PAGE_HEADERS)
    if isinstance(outcome, Refused):
        return _page(request, "oauth/error.html", outcome.status, message=outcome.message)
    assert isinstance(outcome, ConsentPage)
    return _page(request, "oauth/consent.html", 200, page=outcome, email=browser.email, action=_here(request),
                 csrf_field=CSRF_FORM_FIELD, csrf_token=csrf_token)  # fmt: skip


def _oauth_request(request: Request) -> FormRequest:
    return FormRequest(request.method, str(request.url), request.headers, request.query_params.multi_items(), form=False)


@router.get(AUTHORIZE_PATH)
@router.get(AUTHORIZE_PATH.rstrip("/"))
async def authorize_page(request: Request, store: StoreDep, sessions: SessionmakerDep, settings: SettingsDep) -> Response:
    browser = await logged_in(request, store)
    if browser is None:
        return _to_login(request)
    oauth_request = _oauth_request(request)
    outcome = await run_oauth(sessions, settings, lambda server: consent_page(server, oauth_request, browser.user_id))
    csrf_token = request.cookies.get(CSRF_COOKIE) or new_csrf_token()
    response = _render(request, outcome, browser, csrf_token)
    if CSRF_COOKIE not in request.cookies:  # the login page normally set it; a form needs it
        set_cookie(response, request, CSRF_COOKIE, csrf_token, None, httponly=False)
    return response


@router.post(AUTHORIZE_PATH)
@router.post(AUTHORIZE_PATH.rstrip("/"))
async def authorize_decision(request: Request, store: StoreDep, sessions: SessionmakerDep, settings: SettingsDep) -> Response:
    browser = await logged_in(request, store)
    if browser is None:
        return _to_login(request)
    form = await read_form(request, settings.max_body_bytes, settings.body_timeout_seconds)
    if isinstance(form, str):
        return _page(request, "oauth/error.html", 400, message=form)
    fields = dict(form)
    failure = csrf_failure(request.method, request.cookies.get(CSRF_COOKIE), fields.get(CSRF_FORM_FIELD))
    if failure is not None:
        return _page(request, "oauth/error.html", 403, message=failure)
    approve = fields.get("decision") == "approve"
    oauth_request = _oauth_request(request)
    outcome = await run_oauth(
        sessions, settings, lambda server: decide(server, oauth_request, browser.user_id, approve, fields.get("team"))
    )
    return _render(request, outcome, browser, request.cookies.get(CSRF_COOKIE, ""))
