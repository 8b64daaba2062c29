"""A browser for the login and cookie tests: its own cookie jar (the session-wide ``client``
shares one across tests), real HTTP through the ASGI app, and the login form filled in as a
person would."""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.csrf import CSRF_COOKIE, CSRF_FORM_FIELD
from app.auth.passwords import hash_password
from app.auth.web_sessions import SESSION_COOKIE
from app.models import User, WebSession

Db = async_sessionmaker[AsyncSession]
PASSWORD = "correct horse battery staple"
LOGIN = "/accounts/login"
LOGOUT = "/accounts/logout"


def new_browser(app: Any, *, base_url: str = "http://test", client_host: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(client_host, 50000))
    return httpx.AsyncClient(transport=transport, base_url=base_url)


@pytest.fixture
async def browser(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with new_browser(app) as http:
        yield http


async def give_password(db: Db, user: User, password: str = PASSWORD) -> None:
    async with db() as s:
        await s.execute(update(User).where(User.id == user.id).values(password_hash=hash_password(password)))
        await s.commit()


async def open_login_page(browser: httpx.AsyncClient, **params: str) -> str:
    """GET the login page; the CSRF token its form carries."""
    r = await browser.get(LOGIN, params=params)
    assert r.status_code == 200, r.text
    return browser.cookies[CSRF_COOKIE]


async def post_login(browser: httpx.AsyncClient, email: str, password: str = PASSWORD, **fields: str) -> httpx.Response:
    """Open the page, then post its form (``fields`` add to or replace the form's fields)."""
    token = await open_login_page(browser)
    form = {CSRF_FORM_FIELD: token, "email": email, "password": password, "team": "", "next": ""}
    return await browser.post(LOGIN, data=form | fields)


async def log_in(browser: httpx.AsyncClient, email: str, password: str = PASSWORD, **fields: str) -> str:
    """A logged-in browser; returns its (rotated) CSRF token for X-CSRFToken."""
    r = await post_login(browser, email, password, **fields)
    assert r.status_code == 303, r.text
    assert browser.cookies.get(SESSION_COOKIE)
    return browser.cookies[CSRF_COOKIE]


async def sessions_of(db: Db, user: User) -> list[WebSession]:
    async with db() as s:
        return list(await s.scalars(select(WebSession).where(WebSession.user_id == user.id)))


async def session_count(db: Db, user: User) -> int:
    async with db() as s:
        return await s.scalar(select(func.count()).select_from(WebSession).where(WebSession.user_id == user.id)) or 0


def set_cookie_headers(r: httpx.Response, name: str) -> list[str]:
    return [h for h in r.headers.get_list("set-cookie") if h.startswith(f"{name}=")]


def cookie_attributes(r: httpx.Response, name: str) -> dict[str, str]:
    """The attributes of the one Set-Cookie for ``name``, lower-cased names ('' for flags)."""
    (header,) = set_cookie_headers(r, name)
    value, *attributes = (part.strip() for part in header.split(";"))
    parsed = {"value": value.split("=", 1)[1]}
    for attribute in attributes:
        key, _, val = attribute.partition("=")
        parsed[key.lower()] = val
    return parsed
