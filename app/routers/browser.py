"""What the server-rendered pages (login, OAuth consent) share about the browser: who is
logged in, and how their cookies are written (``Secure`` exactly when the request came over
https, as uvicorn reports it after the trusted proxies' ``X-Forwarded-Proto``)."""

from fastapi import Request
from fastapi.responses import Response

from app.auth.web_sessions import SESSION_COOKIE, BrowserSession, find_session
from app.db import utcnow
from app.stores.base import TurnStore

LOGIN_PATH = "/accounts/login"


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def set_cookie(
    response: Response, request: Request, name: str, value: str, max_age: int | None, *, httponly: bool
) -> None:
    """``max_age`` None: a cookie for the browser's session only."""
    response.set_cookie(
        name, value, max_age=max_age, path="/", secure=is_https(request), httponly=httponly,
        samesite="lax",
    )  # fmt: skip


async def logged_in(request: Request, store: TurnStore) -> BrowserSession | None:
    """The browser's unexpired session of an active user, if it has one."""
    raw = request.cookies.get(SESSION_COOKIE)
    found = await find_session(store, raw, utcnow()) if raw else None
    return found if found is not None and found.is_active else None
