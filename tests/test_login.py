"""The login and logout pages (SPEC §4.5), through the ASGI app with a browser's own cookie jar:
the cookies and their attributes, one generic refusal that never says which field was wrong,
CSRF on both posts, redirects that never leave the site, and a logout that ends the session
server-side."""

from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, update
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from app.auth.csrf import CSRF_COOKIE, CSRF_FORM_FIELD, CSRF_HEADER
from app.auth.login import WRONG_CREDENTIALS
from app.auth.web_sessions import SESSION_COOKIE
from app.cli.serve import proxy_options
from app.models import Membership, Role, Team, User
from app.security_headers import PAGE_CSP
from tests.browser import (
    LOGIN,
    LOGOUT,
    PASSWORD,
    browser,  # noqa: F401 (a fixture)
    cookie_attributes,
    give_password,
    log_in,
    new_browser,
    open_login_page,
    post_login,
    session_count,
    sessions_of,
    set_cookie_headers,
)
from tests.factories import add_user, unique

PAGE_HEADERS = {"content-security-policy": PAGE_CSP, "x-frame-options": "DENY", "cache-control": "no-store"}
TWO_WEEKS = str(14 * 24 * 3600)


def assert_page(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("text/html")
    for name, value in PAGE_HEADERS.items():
        assert r.headers[name] == value
    return r.text


@pytest.fixture
async def member(db, world):  # type: ignore[no-untyped-def]
    """The world's admin, with a password."""
    await give_password(db, world.user)
    return world


# --- the login page ----------------------------------------------------------------------------


async def test_login_page_sets_csrftoken_and_renders_a_labelled_form(browser):
    r = await browser.get(LOGIN, params={"next": "/o/authorize/?state=x"})
    html = assert_page(r, 200)
    csrf = cookie_attributes(r, CSRF_COOKIE)
    assert len(csrf["value"]) >= 32
    assert csrf["samesite"].lower() == "lax" and csrf["path"] == "/" and csrf["max-age"] == TWO_WEEKS
    assert "httponly" not in csrf and "secure" not in csrf  # a page script may read it; plain http
    assert f'name="{CSRF_FORM_FIELD}" value="{csrf["value"]}"' in html
    for field in ("email", "password", "team"):
        assert f'<label for="{field}">' in html and f'id="{field}" name="{field}"' in html
    assert 'name="next" value="/o/authorize/?state=x"' in html
    assert "<h1>" in html and "<script" not in html  # usable without JavaScript


async def test_login_page_keeps_the_browsers_csrf_token(browser):
    first = await open_login_page(browser)
    assert await open_login_page(browser) == first  # a form open in another tab stays valid


# --- logging in --------------------------------------------------------------------------------


async def test_login_sets_an_httponly_session_cookie_and_rotates_csrf(browser, db, member):
    before = await open_login_page(browser)
    r = await browser.post(LOGIN, data={CSRF_FORM_FIELD: before, "email": member.user.email.upper(), "password": PASSWORD})
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/docs"
    for name, value in PAGE_HEADERS.items():
        assert r.headers[name] == value
    session = cookie_attributes(r, SESSION_COOKIE)
    assert "httponly" in session and session["samesite"].lower() == "lax"
    assert session["path"] == "/" and session["max-age"] == TWO_WEEKS
    assert "secure" not in session  # plain http: local use works
    csrf = cookie_attributes(r, CSRF_COOKIE)
    assert csrf["value"] != before and "httponly" not in csrf and csrf["max-age"] == TWO_WEEKS
    (row,) = await sessions_of(db, member.user)
    assert row.team_id == member.team.id
    assert session["value"] not in row.session_hash  # stored hashed


async def test_session_lifetime_comes_from_the_setting(app, settings, db, member):
    app.state.settings = settings.model_copy(update={"session_cookie_seconds": 600})
    try:
        async with new_browser(app) as browser:
            r = await post_login(browser, member.user.email)
    finally:
        app.state.settings = settings
    assert cookie_attributes(r, SESSION_COOKIE)["max-age"] == "600"
    (row,) = await sessions_of(db, member.user)
    assert timedelta(seconds=590) < row.expires_at.replace(tzinfo=None) - row.created_at.replace(tzinfo=None) <= timedelta(seconds=600)


def _behind(app: Any, settings: Any) -> Any:
    """The app as ``chatbots serve`` runs it: uvicorn's proxy-header handling, same options."""
    options = proxy_options(settings)
    assert options["proxy_headers"] is True
    return ProxyHeadersMiddleware(app, trusted_hosts=options["forwarded_allow_ips"])


@pytest.mark.parametrize(
    ("peer", "forwarded_proto", "secure"),
    [
        ("127.0.0.1", "https", True),  # the local TLS proxy (the default trusted one)
        ("127.0.0.1", None, False),  # plain http straight to the server
        ("203.0.113.9", "https", False),  # anyone else cannot claim https
    ],
)
async def test_cookies_are_secure_only_over_https_as_a_trusted_proxy_reports_it(app, settings, db, member, peer, forwarded_proto, secure):
    async with new_browser(_behind(app, settings), client_host=peer) as browser:
        headers = {"X-Forwarded-Proto": forwarded_proto} if forwarded_proto else {}
        token = cookie_attributes(await browser.get(LOGIN, headers=headers), CSRF_COOKIE)["value"]
        # Sent by hand: the client's jar, seeing http, would keep back a Secure cookie that a
        # browser (talking https to the proxy) sends.
        browser.cookies.clear()
        form = {CSRF_FORM_FIELD: token, "email": member.user.email, "password": PASSWORD}
        r = await browser.post(LOGIN, data=form, headers={**headers, "Cookie": f"{CSRF_COOKIE}={token}"})
    assert r.status_code == 303, r.text
    assert ("secure" in cookie_attributes(r, SESSION_COOKIE)) is secure
    assert ("secure" in cookie_attributes(r, CSRF_COOKIE)) is secure


async def test_forwarded_proto_alone_does_not_make_cookies_secure(browser, member):
    token = await open_login_page(browser)
    form = {CSRF_FORM_FIELD: token, "email": member.user.email, "password": PASSWORD}
    r = await browser.post(LOGIN, data=form, headers={"X-Forwarded-Proto": "https"})
    assert r.status_code == 303  # the bare app: only uvicorn's proxy handling may change the scheme
    assert "secure" not in cookie_attributes(r, SESSION_COOKIE)


async def _wrong_password(db, world):  # type: ignore[no-untyped-def]
    return world.user.email, "not the password"


async def _unknown_email(db, world):  # type: ignore[no-untyped-def]
    return f"{unique('nobody')}@example.com", PASSWORD


async def _not_an_email(db, world):  # type: ignore[no-untyped-def]
    return "nobody", PASSWORD


async def _inactive_user(db, world):  # type: ignore[no-untyped-def]
    async with db() as s:
        await s.execute(update(User).where(User.id == world.user.id).values(is_active=False))
        await s.commit()
    return world.user.email, PASSWORD


async def _no_password_set(db, world):  # type: ignore[no-untyped-def]
    async with db() as s:
        await s.execute(update(User).where(User.id == world.user.id).values(password_hash=None))
        await s.commit()
    return world.user.email, PASSWORD


async def _empty_password(db, world):  # type: ignore[no-untyped-def]
    return world.user.email, ""


REFUSALS = {
    "wrong-password": _wrong_password,
    "unknown-email": _unknown_email,
    "not-an-email": _not_an_email,
    "inactive-user": _inactive_user,
    "no-password-set": _no_password_set,
    "empty-password": _empty_password,
}


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_refused_login_is_one_generic_400_and_starts_no_session(browser, db, member, case):
    email, password = await REFUSALS[case](db, member)
    r = await post_login(browser, email, password)
    html = assert_page(r, 400)
    assert WRONG_CREDENTIALS in html
    assert 'aria-describedby="login-error"' in html  # tied to both fields, naming neither
    assert "inactive" not in html.lower() and "unknown" not in html.lower()
    assert not set_cookie_headers(r, SESSION_COOKIE)
    assert await session_count(db, member.user) == 0
    assert PASSWORD not in html and (not password or password not in html)


@pytest.mark.parametrize(
    "form",
    [
        pytest.param({}, id="no-token-field"),
        pytest.param({CSRF_FORM_FIELD: "x" * 43}, id="wrong-token"),
    ],
)
async def test_login_post_without_a_matching_csrf_token_is_403(browser, db, member, form):
    await open_login_page(browser)
    r = await browser.post(LOGIN, data={"email": member.user.email, "password": PASSWORD, **form})
    html = assert_page(r, 403)
    assert "CSRF Failed:" in html
    assert await session_count(db, member.user) == 0


async def test_login_post_without_the_csrf_cookie_is_403(browser, db, member):
    token = await open_login_page(browser)
    browser.cookies.clear()
    r = await browser.post(LOGIN, data={CSRF_FORM_FIELD: token, "email": member.user.email, "password": PASSWORD})
    assert "CSRF Failed: CSRF cookie not set." in assert_page(r, 403)
    assert set_cookie_headers(r, CSRF_COOKIE)  # a fresh token, so sending the form again works
    assert await session_count(db, member.user) == 0


async def test_login_post_of_another_content_type_is_415(browser, member):
    token = await open_login_page(browser)
    r = await browser.post(LOGIN, json={CSRF_FORM_FIELD: token, "email": member.user.email, "password": PASSWORD})
    assert r.status_code == 415


OFF_SITE = ["//evil.example", "https://evil.example", "/\\evil.example", "\\\\evil.example",
            "/\t/evil.example", "http:/evil.example", "javascript:alert(1)", "evil.example", " //evil.example"]  # fmt: skip


@pytest.mark.parametrize("target", OFF_SITE)
async def test_next_never_redirects_off_site(browser, member, target):
    r = await post_login(browser, member.user.email, next=target)
    assert r.status_code == 303
    assert r.headers["location"] == "/docs"


async def test_next_on_this_site_is_followed(browser, member):
    target = "/o/authorize/?client_id=abc&state=xyz&scope=chatbots%3Ainteract"
    r = await post_login(browser, member.user.email, next=target)
    assert r.status_code == 303
    assert r.headers["location"] == target


async def test_team_field_chooses_the_sessions_team_else_the_first_membership(app, browser, db, member):
    async with db() as s:
        other = Team(slug=unique("team"), name="Other team")
        s.add(other)
        await s.flush()
        s.add(Membership(team_id=other.id, user_id=member.user.id, role=Role.member))
        await s.commit()
    await log_in(browser, member.user.email, team=other.slug.upper())
    await log_in(browser, member.user.email)
    rows = await sessions_of(db, member.user)
    assert [r.team_id for r in rows] == [member.team.id]  # the second login replaced the first
    async with new_browser(app) as another:
        await log_in(another, member.user.email, team=other.slug)
    assert {r.team_id for r in await sessions_of(db, member.user)} == {member.team.id, other.id}


async def test_a_team_the_user_is_not_in_is_a_400_on_the_team_field(browser, db, member):
    r = await post_login(browser, member.user.email, team="no-such-team")
    html = assert_page(r, 400)
    assert 'id="team-error"' in html and 'aria-describedby="team-error team-help"' in html
    assert await session_count(db, member.user) == 0


async def test_a_user_without_any_team_cannot_log_in(browser, db, member):
    async with db() as s:
        loner = await add_user(s, member.team)
        await s.commit()
    async with db() as s:
        await s.execute(delete(Membership).where(Membership.user_id == loner.id))
        await s.commit()
    await give_password(db, loner)
    r = await post_login(browser, loner.email)
    assert "not a member of any team" in assert_page(r, 400)
    assert await session_count(db, loner) == 0


# --- logged in, and logging out ----------------------------------------------------------------


async def test_login_page_shows_who_is_logged_in_with_a_logout_form(browser, member):
    await log_in(browser, member.user.email)
    html = assert_page(await browser.get(LOGIN), 200)
    assert member.user.email in html and member.team.slug in html
    assert f'action="{LOGOUT}"' in html


async def test_logout_ends_the_session_server_side(app, browser, db, member):
    token = await log_in(browser, member.user.email)
    old_cookie = browser.cookies[SESSION_COOKIE]
    r = await browser.post(LOGOUT, data={CSRF_FORM_FIELD: token})
    assert r.status_code == 303 and r.headers["location"] == LOGIN
    cleared = cookie_attributes(r, SESSION_COOKIE)
    assert cleared["max-age"] == "0" and cleared["value"] in ("", '""')
    assert await session_count(db, member.user) == 0
    # The old cookie, replayed (a copy kept elsewhere), is refused everywhere.
    replay = {"Cookie": f"{SESSION_COOKIE}={old_cookie}; {CSRF_COOKIE}={token}", CSRF_HEADER: token}
    async with new_browser(app) as other:
        r = await other.post(member.url, json={"message": "hi"}, headers=replay)
    assert r.status_code == 401 and r.json() == {"detail": "Invalid token."}


async def test_logout_with_the_csrf_header_instead_of_the_field(browser, db, member):
    token = await log_in(browser, member.user.email)
    r = await browser.post(LOGOUT, headers={CSRF_HEADER: token})
    assert r.status_code == 303
    assert await session_count(db, member.user) == 0


async def test_logout_without_csrf_is_403_and_keeps_the_session(browser, db, member):
    await log_in(browser, member.user.email)
    r = await browser.post(LOGOUT, data={CSRF_FORM_FIELD: "forged" * 8})
    assert "CSRF Failed: CSRF token incorrect." in assert_page(r, 403)
    assert await session_count(db, member.user) == 1
