"""CSRF protection for cookie-authenticated requests (SPEC §4.5): the double-submit pattern.

The ``csrftoken`` cookie (random, not HttpOnly, so a page of this site can read it) is set on the
login page and at login; an unsafe request authenticated by the session cookie must send the same
value in the ``X-CSRFToken`` header (or, from a server-rendered form, the
``csrfmiddlewaretoken`` field). Another site can make the browser send the cookies but cannot
read them, so it cannot send the matching header.
"""

import secrets

from app.auth.principal import SAFE_METHODS
from app.crypto import constant_time_equal

CSRF_COOKIE = "csrftoken"
CSRF_HEADER = "X-CSRFToken"
CSRF_FORM_FIELD = "csrfmiddlewaretoken"


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_failure(method: str, cookie: str | None, presented: str | None) -> str | None:
    """Why the request fails CSRF protection (the 403's detail), or None if it passes."""
    if method in SAFE_METHODS:
        return None
    if not cookie:
        return "CSRF Failed: CSRF cookie not set."
    if not presented:
        return "CSRF Failed: CSRF token missing."
    if not constant_time_equal(cookie, presented):
        return "CSRF Failed: CSRF token incorrect."
    return None
