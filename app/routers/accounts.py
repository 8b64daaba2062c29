"""The browser login (SPEC §4.5): ``GET/POST /accounts/login`` and ``POST /accounts/logout``.

Server-rendered, plain HTML forms that work without JavaScript. Both posts are CSRF-checked
(the ``csrfmiddlewaretoken`` field, or the ``X-CSRFToken`` header, equal to the ``csrftoken``
cookie). A login starts a new server-side session and rotates the CSRF token; a logout ends the
session server-side. Cookies are ``Secure`` when the request came over https, as uvicorn reports
it after the trusted proxies' ``X-Forwarded-Proto`` (``CHATBOTS_FORWARDED_ALLOW_IPS``), so
plain-http local use works and a deployment behind TLS gets Secure cookies.
"""

import re
from dataclasses import dataclass
from datetime import timedelta
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.auth.cache import CredentialCache
from app.auth.csrf import CSRF_COOKIE, CSRF_FORM_FIELD, CSRF_HEADER, csrf_failure, new_csrf_token
from app.auth.login import LoginRefused, check_login, safe_next
from app.auth.rate_limit_http import client_ip, rate_limiter, report
from app.auth.rate_limits import RateLimited
from app.auth.web_sessions import SESSION_COOKIE, end_session, start_session
from app.db import utcnow
from app.models import Team
from app.routers.deps import SessionmakerDep, SettingsDep, StoreDep
from app.routers.browser import LOGIN_PATH, is_https, logged_in, set_cookie
from app.routers.forms import read_form
from app.routers.templating import PAGE_HEADERS, templates
from app.stores.base import TurnStore

router = APIRouter(include_in_schema=False)

LOGOUT_PATH = "/accounts/logout"
DEFAULT_NEXT = "/docs"
# What new_csrf_token makes; a csrftoken cookie of another shape is replaced, not reused.
_CSRF_SHAPE = re.compile(r"[A-Za-z0-9_-]{32,128}")


@dataclass(frozen=True)
class SignedIn:
    email: str
    team: str


def _root(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")


def _credentials(request: Request) -> CredentialCache:
    """This process's memory of credential lookups: an ended session is forgotten at once."""
    return request.app.state.runtime.credentials


def _page_csrf_token(request: Request) -> str:
    """The browser's token if it has one of ours (other tabs' forms keep working), else new."""
    existing = request.cookies.get(CSRF_COOKIE, "")
    return existing if _CSRF_SHAPE.fullmatch(existing) else new_csrf_token()


async def _signed_in(request: Request, store: TurnStore, sessions: SessionmakerDep) -> SignedIn | None:
    """Who the browser is logged in as (shown with a logout button), if anyone."""
    found = await logged_in(request, store)
    if found is None or found.role is None:
        return None
    async with sessions() as db:
        team = await db.get(Team, found.team_id)
    return SignedIn(found.email, team.slug if team else "")


def _login_page(
    request: Request,
    settings: SettingsDep,
    *,
    csrf_token: str,
    status_code: int = 200,
    fields: dict[str, str] | None = None,
    error: str | None = None,
    error_field: str | None = None,
    signed_in: SignedIn | None = None,
) -> HTMLResponse:
    fields = fields or {}
    context = {
        "root": _root(request),
        "csrf_field": CSRF_FORM_FIELD,
        "csrf_token": csrf_token,
        "email": fields.get("email", ""),
        "team": fields.get("team", ""),
        "next": fields.get("next", ""),
        "error": error,
        "error_field": error_field,
        "signed_in": signed_in,
    }
    response = templates.TemplateResponse(
        request, "login.html", context, status_code=status_code, headers=PAGE_HEADERS
    )
    lifetime = settings.session_cookie_seconds  # the token must outlive no session
    set_cookie(response, request, CSRF_COOKIE, csrf_token, lifetime, httponly=False)
    return response


@router.get(LOGIN_PATH)
async def login_page(
    request: Request, settings: SettingsDep, store: StoreDep, sessions: SessionmakerDep,
    next: str = "", team: str = "",
) -> HTMLResponse:  # fmt: skip
    """The login form; sets the ``csrftoken`` cookie its post must match."""
    signed_in = await _signed_in(request, store, sessions)
    token, fields = _page_csrf_token(request), {"next": next, "team": team}
    return _login_page(request, settings, csrf_token=token, fields=fields, signed_in=signed_in)


@router.post(LOGIN_PATH)
async def login(
    request: Request, settings: SettingsDep, store: StoreDep, sessions: SessionmakerDep
) -> Response:
    """Check the form, start a session, and go to ``next`` (a path on this site) or /docs."""
    form = await read_form(request, settings)
    failure = csrf_failure("POST", request.cookies.get(CSRF_COOKIE), form.get(CSRF_FORM_FIELD))
    if failure is not None:  # a fresh token comes with the page, so sending it again works
        token = new_csrf_token()
        return _login_page(request, settings, csrf_token=token, status_code=403, fields=form, error=failure)
    email, password, team = form.get("email", ""), form.get("password", ""), form.get("team", "")
    limiter, ip = rate_limiter(request), client_ip(request)
    try:  # failures are limited per account and per address (SPEC §4.7), before any work
        await limiter.check_login(ip, email)
    except RateLimited as limited:
        page = _login_page(
            request, settings, csrf_token=_page_csrf_token(request), status_code=429, fields=form,
            error=f"Too many failed logins. Try again in {limited.status.reset_after} seconds.",
        )  # fmt: skip
        page.headers.update(limited.headers)
        return page
    try:
        async with sessions() as db:
            choice = await check_login(db, email, password, team)
    except LoginRefused as refused:
        if refused.field is None:  # the email and password (a team chosen wrong is no guess)
            report(request, await limiter.record_login_failure(ip, email))
        return _login_page(
            request, settings, csrf_token=_page_csrf_token(request), status_code=400, fields=form,
            error=refused.detail, error_field=refused.field,
        )  # fmt: skip
    if previous := request.cookies.get(SESSION_COOKIE):  # a login replaces a session, never adds one
        await end_session(store, previous, _credentials(request))
    lifetime = settings.session_cookie_seconds
    raw = await start_session(
        store, choice.user_id, choice.team_id, utcnow(), timedelta(seconds=lifetime)
    )
    target = safe_next(form.get("next"), _root(request) + DEFAULT_NEXT)
    response = RedirectResponse(target, status_code=303, headers=PAGE_HEADERS)
    set_cookie(response, request, SESSION_COOKIE, raw, lifetime, httponly=True)
    # A new token at login: one a page could have read before (or planted) is worth nothing after.
    set_cookie(response, request, CSRF_COOKIE, new_csrf_token(), lifetime, httponly=False)
    return response


@router.post(LOGOUT_PATH)
async def logout(request: Request, settings: SettingsDep, store: StoreDep) -> Response:
    """End the browser's session server-side (the old cookie is then refused everywhere)."""
    form = await read_form(request, settings)
    presented = form.get(CSRF_FORM_FIELD) or request.headers.get(CSRF_HEADER)
    failure = csrf_failure("POST", request.cookies.get(CSRF_COOKIE), presented)
    if failure is not None:  # another site cannot log a browser out
        token = _page_csrf_token(request)
        return _login_page(request, settings, csrf_token=token, status_code=403, error=failure)
    if raw := request.cookies.get(SESSION_COOKIE):
        await end_session(store, raw, _credentials(request))
    response = RedirectResponse(_root(request) + LOGIN_PATH, status_code=303, headers=PAGE_HEADERS)
    response.delete_cookie(
        SESSION_COOKIE, path="/", secure=is_https(request), httponly=True, samesite="lax"
    )
    return response
