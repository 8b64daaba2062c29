"""What one HTTP connection may cost ``chatbots serve``: bounded request heads, timed-out slow
heads, and a bound on connections per worker process.

uvicorn's httptools protocol (the fast parser) has none of this: it buffers an unfinished header
for ever and without limit (four connections sending 64 MiB of header each took the process from
117 to 373 MiB), answers a finished 64 MiB header block, and never closes a connection that
connected and sent nothing or half a request head. ``h11_max_incomplete_event_size`` bounds the
pure-Python h11 parser only, which costs more CPU per request on the hot path; so this keeps
httptools and adds the limits around its parser:

- a request head (request line and headers) over ``max_header_bytes`` → 431 and close, counted on
  the raw bytes *before* the parser buffers them, so memory stays bounded per connection;
- a head not complete within ``header_timeout_seconds`` of its first byte (of the connection, for
  its first request) → 408 and close (a connection that sent nothing is closed silently: browsers
  open spare connections they may never use);
- idle keep-alive connections are closed by uvicorn's ``timeout_keep_alive``
  (``keep_alive_seconds``);
- more than ``max_connections`` open connections, or as many requests in flight, in this worker →
  503 JSON with ``Retry-After`` and close (uvicorn's ``limit_concurrency``, answered in this API's
  error envelope instead of ``text/plain``).

Bodies are bounded in size and time by the application (``app.routers.body``).
"""

import asyncio
import logging
from http import HTTPStatus
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.config import Settings, get_settings

log = logging.getLogger(__name__)

# The class ``chatbots serve`` hands uvicorn (a string, so that worker processes import it).
PROTOCOL = "app.connection_limits:GuardedHttpToolsProtocol"
OVER_CAPACITY = "Too many connections; try again shortly."
OVER_CAPACITY_RETRY_AFTER = "1"


def _raw_response(status: int, detail: str, *headers: str) -> bytes:
    body = orjson.dumps({"detail": detail})
    head = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        *headers,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


HEAD_TOO_LARGE = _raw_response(431, "Request header fields too large.")
HEAD_TIMED_OUT = _raw_response(408, "Timed out reading the request headers.")


async def _over_capacity(scope: Any, receive: Any, send: Any) -> None:
    body = orjson.dumps({"detail": OVER_CAPACITY})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", OVER_CAPACITY_RETRY_AFTER.encode()),
        (b"connection", b"close"),  # frees the slot at once
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The connection limits as ``uvicorn.run`` arguments (the rest is read by the protocol)."""
    return {"http": PROTOCOL, "timeout_keep_alive": settings.keep_alive_seconds}


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self.max_header_bytes = settings.max_header_bytes
        self.header_timeout = settings.header_timeout_seconds
        self.max_connections = settings.max_connections
        self.limit_concurrency = None  # checked below, answered in JSON
        self._in_head = True  # the next bytes received belong to a request head
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # While a head is being read, the parser is fed no more than the head's remaining room:
        # the bytes it would buffer are counted before it buffers them. Once the head is
        # complete the rest of the chunk (body, or a pipelined request) is fed as it is.
        while data and self._in_head:
            if self._head_timer is None:
                self._arm_head_timer()
            room = self.max_header_bytes - self._head_bytes
            if room <= 0:
                self._refuse(HEAD_TOO_LARGE, "request head over %d bytes" % self.max_header_bytes)
                return
            piece, data = data[:room], data[room:]
            self._head_bytes += len(piece)
            super().data_received(piece)
            if self.transport.is_closing():
                return
        if data:
            super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        if len(self.connections) > self.max_connections or len(self.tasks) >= self.max_connections:
            log.warning("over %d connections: 503", self.max_connections)
            app, self.app = self.app, _over_capacity
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        else:
            super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head waits behind a response being written: not the client's delay.
            self._arm_head_timer()
            return
        if self._head_bytes:
            self._refuse(HEAD_TIMED_OUT, "request head not complete in %gs" % self.header_timeout)
        else:
            self.transport.close()  # connected and sent nothing: nobody to answer

    def _refuse(self, response: bytes, why: str) -> None:
        client = "%s:%d" % self.client if self.client else "?"
        log.warning("closing the connection of %s: %s", client, why)
        self._cancel_head_timer()
        self.transport.write(response)
        self.transport.close()
