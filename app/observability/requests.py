"""``RequestIdMiddleware``: the request id, pending response headers, the answer of last
resort, and what every request leaves behind: its metrics and its one access log line."""

import logging
import time
import uuid
from collections.abc import MutableMapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import internal_error_response
from app.observability.logs import REQUEST_ID
from app.observability.metrics import UNMATCHED_ROUTE, observe_request
from app.response_headers import with_pending_headers

log = logging.getLogger(__name__)
access_log = logging.getLogger("chatbots.access")

# Probes and scrapes come every few seconds: counted in the metrics, logged only at DEBUG.
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
# The status recorded for a request that ended without a response (cut off at shutdown).
NO_RESPONSE = 0


class RequestIdMiddleware:
    """Every response carries ``X-Request-ID``: the client's, or a new one (pure ASGI: cheap),
    and the headers its handling left pending (``app.response_headers``: rate limits). Every log
    line written while the request is handled carries the id (``logs.REQUEST_ID``).

    It also answers an unexpected exception: a JSON 500 with the request id, logged once here
    with its traceback and the id. Not re-raised, or the server would log it a second time; and
    Starlette's own handler of last resort runs outside this middleware, without the header.

    When the request is done: its metrics, and one access line (route template, never the raw
    path: no ids or query strings; who asked, by credential kind and team; status; duration).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrived = time.perf_counter()
        request_id = next(
            (v.decode("latin-1")[:200] for k, v in scope["headers"] if k == b"x-request-id"),
            None,
        ) or uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        id_token = REQUEST_ID.set(request_id)
        status = NO_RESPONSE

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = with_pending_headers(
                    state, [*message["headers"], (b"x-request-id", request_id.encode("latin-1"))]
                )
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if status != NO_RESPONSE:
                raise  # too late to answer: the server logs it and drops the connection
            log.exception(
                "unexpected error: %s %s (request %s)", scope["method"], scope["path"], request_id
            )
            await internal_error_response(request_id)(scope, receive, send_with_id)
        finally:
            _record(scope, state, status, time.perf_counter() - arrived)
            REQUEST_ID.reset(id_token)


def _record(scope: Scope, state: MutableMapping[str, Any], status: int, seconds: float) -> None:
    route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
    method = scope["method"]
    observe_request(method, route, status, seconds)
    level = logging.DEBUG if route in QUIET_ROUTES else logging.INFO
    if not access_log.isEnabledFor(level):
        return
    principal = state.get("principal")
    duration_ms = round(seconds * 1000, 1)
    fields = {
        "method": method, "route": route, "status": status, "duration_ms": duration_ms,
        "principal": principal.kind if principal is not None else None,
        "team": principal.team_id if principal is not None else None,
    }  # fmt: skip
    access_log.log(level, "%s %s %d %.1f ms", method, route, status, duration_ms, extra={"fields": fields})
