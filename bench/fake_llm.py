"""A fake OpenAI-compatible chat completions server, for the test-suite and the benchmark.

A minimal raw ASGI app served by uvicorn (no framework: the benchmark measures against it).

    python bench/fake_llm.py --port 0 --latency-ms 200     # prints "LISTENING <port>" when ready

    from bench.fake_llm import FakeLlmServer
    server = FakeLlmServer(latency_ms=0).start()    # a background thread, 127.0.0.1, a free port
    server.base_url                                         # "http://127.0.0.1:<port>/v1"
    server.requests()                                       # recorded request bodies (last 1000)
    server.stop()

Endpoints: ``POST /v1/chat/completions`` (also any path ending in ``/chat/completions``, e.g. the
Azure deployments path), ``GET /_requests`` (JSON list of recorded bodies; ``?full=1`` for
``{"path", "query", "headers", "body"}`` records), ``DELETE /_requests`` (also resets the flaky
counters), ``GET /healthz``.

The reply is ``"echo: " + <last user message>``. The ``model`` field selects the behaviour, so
concurrent tests do not interfere. It is a ``+``-separated list of directives, optionally followed
by ``#<tag>`` (ignored, but part of the model string: use it to make a model unique to a test):

- ``latency-<ms>``: sleep that long before answering (default: the server's ``--latency-ms``);
- ``fail-<status>``: answer ``status`` with ``{"error": {"message": "fake failure <status>",
  "type": "fake"}}``; a 429 carries ``Retry-After: 0``;
- ``flaky-<n>-<status>``: fail like ``fail-<status>`` for the first n requests with the same
  key (the full model string + the ``X-Test-Key`` header, or else the body's ``user``), then
  succeed;
- ``retryafter-<seconds>``: the ``Retry-After`` value sent with failures;
- ``hang``: sleep 3600 s (until the client goes away);
- ``garbage``: 200 with a non-JSON body;
- anything else: a normal reply.
"""

import argparse
import asyncio
import socket
import sys
import threading
import time
from collections import deque
from typing import Any
from urllib.parse import parse_qs

import orjson
import uvicorn

MAX_RECORDED = 1000
_MAX_FLAKY_KEYS = 10_000
# Sleeps at least this long also watch for the client going away, so that they end with it.
_WATCH_DISCONNECT_SECONDS = 1.0

_JSON_HEADERS = [(b"content-type", b"application/json")]


class FakeLlmApp:
    """The ASGI app. State is touched from the server's loop, and read from other threads."""

    def __init__(self, latency_ms: float = 0.0, max_recorded: int = MAX_RECORDED) -> None:
        self.latency_ms = latency_ms
        self._records: deque[dict[str, Any]] = deque(maxlen=max_recorded)
        self._flaky: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._counter = 0

    # ---- state, safe from any thread ----
    def requests(self, full: bool = False) -> list[dict[str, Any]]:
        with self._lock:
            records = list(self._records)
        return records if full else [r["body"] for r in records]

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self._flaky.clear()

    # ---- ASGI ----
    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if path.endswith("/chat/completions"):
            if method != "POST":
                await _respond(send, 405, {"error": {"message": "method not allowed"}})
                return
            await self._chat(scope, receive, send)
        elif path == "/_requests":
            if method == "DELETE":
                self.clear()
                await _respond(send, 200, {"cleared": True})
            else:
                query = parse_qs(scope.get("query_string", b"").decode())
                full = query.get("full", ["0"])[0] not in ("0", "", "false")
                await _respond(send, 200, self.requests(full=full))
        elif path == "/healthz":
            await _respond(send, 200, {"status": "ok"})
        else:
            await _respond(send, 404, {"error": {"message": f"no route {path}", "type": "fake"}})

    async def _chat(self, scope: dict, receive: Any, send: Any) -> None:
        raw = await _read_body(receive)
        try:
            body = orjson.loads(raw)
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            await _respond(send, 400, {"error": {"message": "invalid JSON body", "type": "fake"}})
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        with self._lock:
            self._records.append(
                {
                    "path": scope["path"],
                    "query": scope.get("query_string", b"").decode("latin-1"),
                    "headers": headers,
                    "body": body,
                }
            )
        model = str(body.get("model", ""))
        directives = model.split("#", 1)[0].split("+")

        latency_ms = self.latency_ms
        fail_status: int | None = None
        retry_after: str | None = None
        hang = garbage = False
        for directive in directives:
            parts = directive.split("-")
            try:
                if parts[0] == "latency" and len(parts) == 2:
                    latency_ms = float(parts[1])
                elif parts[0] == "fail" and len(parts) == 2:
                    fail_status = int(parts[1])
                elif parts[0] == "flaky" and len(parts) == 3:
                    key = (model, headers.get("x-test-key") or str(body.get("user", "")))
                    if self._flaky_hit(key, int(parts[1])):
                        fail_status = int(parts[2])
                elif parts[0] == "retryafter" and len(parts) == 2:
                    retry_after = parts[1]
                elif directive == "hang":
                    hang = True
                elif directive == "garbage":
                    garbage = True
            except ValueError:
                pass  # not a directive after all: a plain model name

        if hang:
            await _sleep_or_disconnect(3600.0, receive)
            return
        if latency_ms > 0:
            if await _sleep_or_disconnect(latency_ms / 1000.0, receive):
                return
        if fail_status is not None:
            extra = []
            if retry_after is not None:
                extra.append((b"retry-after", retry_after.encode()))
            elif fail_status == 429:
                extra.append((b"retry-after", b"0"))
            error = {"message": f"fake failure {fail_status}", "type": "fake"}
            await _respond(send, fail_status, {"error": error}, extra)
            return
        if garbage:
            await _send(send, 200, b"<html>this is not JSON", [(b"content-type", b"text/html")])
            return
        await _respond(send, 200, self._completion(body, model))

    def _flaky_hit(self, key: tuple[str, str], failures: int) -> bool:
        """True while this key has been seen fewer than ``failures`` times."""
        with self._lock:
            seen = self._flaky.get(key, 0)
            if seen >= failures:
                return False
            if key not in self._flaky and len(self._flaky) >= _MAX_FLAKY_KEYS:
                self._flaky.pop(next(iter(self._flaky)))
            self._flaky[key] = seen + 1
            return True

    def _completion(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        messages = body.get("messages") if isinstance(body.get("messages"), list) else []
        last_user = ""
        prompt_chars = 0
        for message in messages:
            if isinstance(message, dict):
                text = _text(message.get("content"))
                prompt_chars += len(text)
                if message.get("role") == "user":
                    last_user = text
        reply = "echo: " + last_user
        prompt_tokens = max(1, prompt_chars // 4)
        completion_tokens = max(1, len(reply) // 4)
        self._counter += 1
        return {
            "id": f"chatcmpl-fake-{self._counter}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "system_fingerprint": None,
        }


def create_app(latency_ms: float = 0.0) -> FakeLlmApp:
    return FakeLlmApp(latency_ms=latency_ms)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _sleep_or_disconnect(seconds: float, receive: Any) -> bool:
    """Sleep; True if the client went away first (then nothing should be sent)."""
    if seconds < _WATCH_DISCONNECT_SECONDS:
        await asyncio.sleep(seconds)
        return False

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    sleeper = asyncio.ensure_future(asyncio.sleep(seconds))
    watcher = asyncio.ensure_future(disconnected())
    done, pending = await asyncio.wait({sleeper, watcher}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return watcher in done


async def _respond(send: Any, status: int, payload: Any, extra_headers: list | None = None) -> None:
    await _send(send, status, orjson.dumps(payload), _JSON_HEADERS + (extra_headers or []))


async def _send(send: Any, status: int, body: bytes, headers: list) -> None:
    headers = headers + [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class _Server(uvicorn.Server):
    """uvicorn's server, calling ``on_ready`` once it accepts connections."""

    def __init__(self, config: uvicorn.Config, on_ready: Any) -> None:
        super().__init__(config)
        self._on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit:
            self._on_ready()


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _config(app: FakeLlmApp) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        backlog=4096,
        timeout_graceful_shutdown=2,
    )


class FakeLlmServer:
    """Runs the fake server on 127.0.0.1 in a background thread (its own event loop)."""

    def __init__(self, latency_ms: float = 0.0, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = create_app(latency_ms)
        self.host = host
        self._requested_port = port
        self.port: int | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def requests(self, full: bool = False) -> list[dict[str, Any]]:
        return self.app.requests(full=full)

    def clear(self) -> None:
        self.app.clear()

    def start(self, timeout: float = 10.0) -> "FakeLlmServer":
        sock = _bind(self.host, self._requested_port)
        self.port = sock.getsockname()[1]
        self._server = _Server(_config(self.app), on_ready=self._ready.set)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="fake-llm", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.02):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the fake LLM server did not start")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._server = self._thread = None

    def __enter__(self) -> "FakeLlmServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fake OpenAI-compatible LLM server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="default reply latency")
    args = parser.parse_args(argv)

    sock = _bind(args.host, args.port)
    port = sock.getsockname()[1]

    def ready() -> None:
        print(f"LISTENING {port}", flush=True)

    _Server(_config(create_app(args.latency_ms)), on_ready=ready).run(sockets=[sock])


if __name__ == "__main__":
    main(sys.argv[1:])
