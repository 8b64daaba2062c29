"""CORS for web widgets (SPEC §4.6): only the two ``incoming_message`` routes, only for origins
an embed key's channel allows. Everything else stays closed: no CORS header anywhere else.

- A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method: POST``) carries
  no ``X-Embed-Key``, so it is judged by the chatbot in its path: allowed if any of that
  chatbot's live widget channels allows the origin (``widget_allows_origin``) → 204 with the
  CORS headers; otherwise 403 JSON without them (the browser then refuses the call).
- A ``POST`` answered for an embed key (``request.state.principal``, set once the key and the
  page's origin were checked) echoes the ``Origin`` with ``Vary: Origin`` — errors after
  authentication too, so the widget can read them. A request whose key or origin was refused
  gets no CORS header: the browser hides the 401/403 from the page.

No ``Access-Control-Allow-Credentials``: an embed key is a header, never a cookie.
"""

import re
import uuid

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.auth.resolvers.embed_key import widget_allows_origin
from app.errors import DomainError, PermissionDenied, error_response

WIDGET_PATH = re.compile(r"/channels/api/([^/]+)/(?:v[^/]+/)?incoming_message/?")
ALLOW_HEADERS = "Content-Type, X-Embed-Key, Idempotency-Key, X-Request-ID"
EXPOSE_HEADERS = "X-Request-ID, Retry-After"
PREFLIGHT_MAX_AGE = "600"  # browsers cache an allowed preflight this many seconds (Chrome caps 7,200)
PREFLIGHT_REFUSED = "This origin may not call this endpoint."


class WidgetCorsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = WIDGET_PATH.fullmatch(scope["path"]) if scope["type"] == "http" else None
        headers = Headers(scope=scope) if path is not None else None
        origin = headers.get("origin") if headers is not None else None
        if path is None or headers is None or origin is None:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await self._preflight(scope, receive, send, path.group(1), origin, headers)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                principal = scope.get("state", {}).get("principal")
                if principal is not None and principal.kind == "embed_key":
                    message["headers"] = [*message.get("headers", []), *_cors_headers(origin),
                                          (b"access-control-expose-headers", EXPOSE_HEADERS.encode())]  # fmt: skip
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(
        self, scope: Scope, receive: Receive, send: Send, chatbot: str, origin: str, headers: Headers
    ) -> None:
        try:
            allowed = headers["access-control-request-method"].strip().upper() == "POST" and (
                await widget_allows_origin(scope["app"].state.runtime.store, uuid.UUID(chatbot), origin)
            )
        except ValueError:  # not a chatbot id: nothing to allow
            allowed = False
        except DomainError as exc:  # the database is down
            await error_response(exc)(scope, receive, send)
            return
        if not allowed:
            response = error_response(PermissionDenied(PREFLIGHT_REFUSED))
            response.headers["Vary"] = "Origin"
            await response(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 204, "headers": [
            *_cors_headers(origin),
            (b"access-control-allow-methods", b"POST"),
            (b"access-control-allow-headers", ALLOW_HEADERS.encode()),
            (b"access-control-max-age", PREFLIGHT_MAX_AGE.encode()),
        ]})  # fmt: skip
        await send({"type": "http.response.body", "body": b""})


def _cors_headers(origin: str) -> list[tuple[bytes, bytes]]:
    return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
