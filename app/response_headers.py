"""Headers decided while a request is handled that its response must carry whatever it turns
out to be: the handler's return, an error handler's JSON, or the 500 of last resort (the rate
limits' ``X-RateLimit-*``, the security headers of ``app.security_headers``). They wait in the request's ASGI state;
``app.observability.requests.RequestIdMiddleware``, which already adds ``X-Request-ID`` to every
response, adds them too."""

from collections.abc import MutableMapping
from typing import Any

_STATE_KEY = "response_headers"


def add_response_headers(state: MutableMapping[str, Any], headers: dict[str, str]) -> None:
    state.setdefault(_STATE_KEY, {}).update(headers)


def with_pending_headers(
    state: MutableMapping[str, Any], headers: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """``headers`` and the pending ones it does not already have (an error's own win)."""
    pending: dict[str, str] | None = state.get(_STATE_KEY)
    if not pending:
        return headers
    present = {name.lower() for name, _ in headers}
    added = ((name.lower().encode(), value.encode()) for name, value in pending.items())
    return [*headers, *(header for header in added if header[0] not in present)]
