"""Security headers every response carries (issue 9, item 6), added in one place so that
handlers, error handlers and the 500 of last resort all get them.

- ``X-Content-Type-Options: nosniff`` everywhere: a browser never guesses a JSON error or an
  asset into HTML or script.
- ``Cache-Control: no-store`` on the API (``/channels/...`` and ``/api/...``): their answers
  carry conversation text (a reply, a delivery's error) that no shared or browser cache may keep.
  A handler's own ``Cache-Control`` wins.
- ``Strict-Transport-Security`` when the request came over https, as uvicorn reports it after
  the trusted proxies' ``X-Forwarded-Proto`` (``CHATBOTS_FORWARDED_ALLOW_IPS``): over plain http
  the header means nothing (RFC 6797 §7.2), and local development must stay plain http.
  No ``includeSubDomains``: this service does not speak for its domain's other hosts.

Frame denial and a Content-Security-Policy belong to the HTML: the pages (``PAGE_CSP``) and
``/docs`` (``docs_csp``, with the nonce of its one inline script).
"""

from starlette.types import ASGIApp, Receive, Scope, Send

from app.response_headers import add_response_headers

NO_STORE_PREFIXES = ("/channels/", "/api/")
HSTS = "max-age=31536000"

# The login and consent pages: no script of theirs, their one inline <style>, never framed.
# connect-src 'self': calls to this origin from a logged-in tab stay possible (the login browser
# test chats from the page). No form-action: the consent form's answer redirects to the client's
# own redirect URI, which browsers would check against it.
PAGE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def docs_csp(nonce: str) -> str:
    """Swagger UI: its bundle and stylesheet from this service, its one inline script by nonce,
    the calls it makes (the document, the token endpoint, the API) to this origin only. Its
    components set inline styles and draw data: images."""
    return (
        f"default-src 'none'; script-src 'self' 'nonce-{nonce}'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
    )


FRAME_DENIAL = {"X-Frame-Options": "DENY"}


class SecurityHeadersMiddleware:
    """Decides the request's security headers and leaves them pending
    (``app.response_headers``): ``RequestIdMiddleware``, inside this one, writes them into
    whatever response goes out, its own 500 of last resort included; a response's own header
    of the same name wins."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {"X-Content-Type-Options": "nosniff"}
            if scope["path"].startswith(NO_STORE_PREFIXES):
                headers["Cache-Control"] = "no-store"
            if scope.get("scheme") == "https":
                headers["Strict-Transport-Security"] = HSTS
            add_response_headers(scope.setdefault("state", {}), headers)
        await self.app(scope, receive, send)
