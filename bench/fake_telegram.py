"""A fake Telegram Bot API for the deliveries benchmark: ``sendMessage`` answered after a fixed
latency, every request counted per chat, so that the run can check each delivery arrived once.

A minimal raw ASGI app served by uvicorn (as ``bench/fake_llm.py``, whose server helpers it uses),
in a process of its own, on 127.0.0.1 only:

    python -m bench.fake_telegram --port 0 --latency-ms 50   # prints "LISTENING <port>" when ready

The service points at it with ``CHATBOTS_TELEGRAM_API_BASE=http://127.0.0.1:<port>``.

Endpoints:

- ``POST /bot<token>/sendMessage`` with ``{"chat_id", "text"}``: after ``--latency-ms``,
  ``{"ok": true, "result": {"message_id": n, "chat": {"id": chat_id}}}`` (n counts from 1). A
  token other than ``--token`` (when given) gets Telegram's 401 ``{"ok": false, ...}``; a body
  without ``chat_id`` or ``text`` a 400.
- ``GET /_stats``: ``{"received", "answered", "errors", "chats", "duplicates", "first_at",
  "last_at"}`` (times: ``time.time()`` of the first and last answer); ``?chats=1`` adds
  ``per_chat`` (chat id -> requests) and ``answered_at`` (every answer's time, in order).
- ``DELETE /_stats``: forget everything (between rounds).
- ``GET /healthz``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from typing import Any
from urllib.parse import parse_qs

import orjson

from bench.fake_llm import _bind, _config, _read_body, _respond, _Server


class FakeTelegramApp:
    """The ASGI app; its state lives on the server's loop (one process, one thread)."""

    def __init__(self, latency_ms: float = 50.0, token: str | None = None) -> None:
        self.latency = latency_ms / 1000.0
        self.token = token
        self.reset()

    def reset(self) -> None:
        self.received = 0
        self.answered = 0
        self.errors = 0
        self.message_id = 0
        self.per_chat: Counter[str] = Counter()
        self.answered_at: list[float] = []

    def stats(self, chats: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "received": self.received,
            "answered": self.answered,
            "errors": self.errors,
            "chats": len(self.per_chat),
            "duplicates": sum(n - 1 for n in self.per_chat.values() if n > 1),
            "first_at": self.answered_at[0] if self.answered_at else None,
            "last_at": self.answered_at[-1] if self.answered_at else None,
            "latency_ms": self.latency * 1000.0,
        }
        if chats:
            out["per_chat"] = dict(self.per_chat)
            out["answered_at"] = self.answered_at
        return out

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if path.endswith("/sendMessage") and path.startswith("/bot"):
            if method != "POST":
                await _respond(send, 405, _error(405, "Method Not Allowed"))
                return
            await self._send_message(path, receive, send)
        elif path == "/_stats":
            if method == "DELETE":
                self.reset()
                await _respond(send, 200, {"reset": True})
            else:
                query = parse_qs(scope.get("query_string", b"").decode())
                chats = query.get("chats", ["0"])[0] not in ("0", "", "false")
                await _respond(send, 200, self.stats(chats))
        elif path == "/healthz":
            await _respond(send, 200, {"status": "ok"})
        else:
            await _respond(send, 404, _error(404, "Not Found"))

    async def _send_message(self, path: str, receive: Any, send: Any) -> None:
        self.received += 1
        raw = await _read_body(receive)
        token = path[len("/bot") : -len("/sendMessage")]
        if self.token is not None and token != self.token:
            self.errors += 1
            await _respond(send, 401, _error(401, "Unauthorized"))
            return
        try:
            body = orjson.loads(raw)
            chat_id, text = str(body["chat_id"]), body["text"]
            if not isinstance(text, str) or not text:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            self.errors += 1
            await _respond(send, 400, _error(400, "Bad Request: message text is empty"))
            return
        self.per_chat[chat_id] += 1
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        self.message_id += 1
        self.answered += 1
        self.answered_at.append(time.time())
        await _respond(send, 200, {"ok": True, "result": {"message_id": self.message_id,
                                                          "chat": {"id": chat_id}}})  # fmt: skip


def _error(code: int, description: str) -> dict[str, Any]:
    return {"ok": False, "error_code": code, "description": description}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fake Telegram Bot API (sendMessage).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="before each answer")
    parser.add_argument("--token", default=None, help="the only bot token accepted (default: any)")
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("loopback only")

    sock = _bind(args.host, args.port)
    port = sock.getsockname()[1]

    def ready() -> None:
        print(f"LISTENING {port}", flush=True)

    app = FakeTelegramApp(args.latency_ms, args.token)
    _Server(_config(app), on_ready=ready).run(sockets=[sock])  # type: ignore[arg-type]


if __name__ == "__main__":
    main(sys.argv[1:])
