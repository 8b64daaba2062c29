"""Real delivery worker processes and their surroundings, for the tests that run them
(tests/test_delivery_processes.py, tests/test_scale_out.py, tests/test_postgres_outage.py): a
loopback fake of Telegram's Bot API served by an event loop on a thread of its own (so that it
answers while a test waits), each worker process given its own base URL on it (``<fake>/<name>``:
Telegram's URL is ``<base>/bot<token>/sendMessage``, so every request says which process sent
it), a database of its own per test (a worker claims every due delivery in its database), and
stopping processes. Nothing of ours is mocked."""

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from sqlalchemy import func, select

from app.config import Settings
from app.main import create_app
from app.models import ChatMessage, Delivery
from tests.factories import World, add_telegram_channel, make_world
from tests.own_database import own_database
from tests.server import start_worker

SECRET_KEY = "test-secret-key"
BOT_TOKEN = "123:abc"
ON_POSTGRES = bool(os.environ.get("CHATBOTS_TEST_DATABASE_URL"))
CONCURRENCY = 8


@dataclass(frozen=True)
class Received:
    worker: str  # the first segment of the path: the name in the base URL the process was given
    chat_id: str
    text: str


class ThreadedTelegram:
    """``sendMessage`` on 127.0.0.1, on a thread of its own: records ``(worker, chat_id, text)``
    of each request when it arrives, answers ``ok`` after ``delay`` seconds.

    ``at(n, action)`` runs ``action`` (on the fake's thread) as the n-th request arrives: a
    signal sent then reaches the worker at a known point, however loaded the machine is.
    ``hold_until_all_sent(names)`` holds every answer until each named worker has sent a
    request (or ``timeout`` passes), so all of them are at work at once."""

    def __init__(self, delay: float = 0.05) -> None:
        self.delay = delay
        self.url = ""
        self._received: list[Received] = []
        self._lock = threading.Lock()
        self._actions: list[tuple[int, Callable[[], None]]] = []
        self._hold_for: frozenset[str] = frozenset()
        self._hold_timeout = 0.0
        self._loop = asyncio.new_event_loop()
        self._released = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-telegram", daemon=True)

    def url_for(self, worker: str) -> str:
        return f"{self.url}/{worker}"

    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def at(self, count: int, action: Callable[[], None]) -> None:
        with self._lock:
            if len(self._received) >= count:
                action()
            else:
                self._actions.append((count, action))

    def hold_until_all_sent(self, workers: set[str], timeout: float = 30.0) -> None:
        self._hold_for, self._hold_timeout = frozenset(workers), timeout

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        worker = request.path.split("/")[1]
        with self._lock:
            self._received.append(Received(worker, str(body["chat_id"]), body["text"]))
            count, seen = len(self._received), {r.worker for r in self._received}
            due = [a for a in self._actions if a[0] <= count]
            self._actions = [a for a in self._actions if a[0] > count]
        for _, action in due:
            action()
        if self._hold_for and not self._released.is_set():
            if self._hold_for <= seen:
                self._released.set()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._released.wait(), self._hold_timeout)
        await asyncio.sleep(self.delay)
        return web.json_response({"ok": True, "result": {"message_id": 1000 + count}})

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> "ThreadedTelegram":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()


@dataclass
class Env:
    tmp_path: Path
    database_url: str
    app: Any
    client: httpx.AsyncClient
    world: World
    telegram: ThreadedTelegram
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)
    logs: dict[str, Path] = field(default_factory=dict)

    async def trigger(self, i: int) -> str:
        """A delivery of "m<i>" to the Telegram chat "<i>"; its id."""
        body = {"identifier": str(i), "platform": "telegram", "experiment": str(self.world.chatbot.public_id),
                "message_text": f"m{i}"}  # fmt: skip
        response = await self.client.post("/api/trigger_bot", json=body, headers=self.world.headers)
        assert response.status_code == 200, response.text
        return response.json()["delivery_id"]

    def worker(self, name: str, **settings: str) -> subprocess.Popen[bytes]:
        """``chatbots worker`` on this database, sending to the fake at ``<fake>/<name>``."""
        configured = {
            "database_url": self.database_url, "secret_key": SECRET_KEY,
            "telegram_api_base": self.telegram.url_for(name),
            "delivery_concurrency": str(CONCURRENCY), "delivery_poll_seconds": "0.2",
            **({"auto_migrate": "false"} if ON_POSTGRES else {}), **settings,
        }  # fmt: skip
        self.logs[name] = self.tmp_path / f"worker-{name}.log"
        proc = start_worker(self.tmp_path, self.logs[name], settings=configured)
        self.procs.append(proc)
        return proc

    def output(self) -> str:
        """The workers' output, for failure messages."""
        return "\n".join(f"--- {name}:\n{path.read_text(errors='replace')[-3000:]}"
                         for name, path in self.logs.items() if path.exists())  # fmt: skip

    async def statuses(self) -> Counter[str]:
        async with self.app.state.sessionmaker() as s:
            return Counter(dict((await s.execute(
                select(Delivery.status, func.count()).group_by(Delivery.status)
            )).all()))  # fmt: skip

    async def until_all_sent(self, count: int, timeout: float) -> Counter[str]:
        deadline = time.monotonic() + timeout
        while (statuses := await self.statuses())["sent"] < count and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return statuses

    async def ai_messages_per_delivery(self) -> list[int]:
        """For each delivery, how many AI messages its session holds (one session each here)."""
        async with self.app.state.sessionmaker() as s:
            per_session = dict((await s.execute(
                select(ChatMessage.session_id, func.count())
                .where(ChatMessage.role == "ai").group_by(ChatMessage.session_id)
            )).all())  # fmt: skip
            sessions = (await s.scalars(select(Delivery.session_id))).all()
        return [per_session.get(session, 0) for session in sessions]


async def exit_code(proc: subprocess.Popen[Any], timeout: float) -> int | None:
    """The process's exit code, or None if it is still running after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return proc.poll()


async def stop_all(procs: list[subprocess.Popen[Any]], timeout: float = 10.0) -> list[int | None]:
    """SIGTERM to each, then their exit codes (None: still running after ``timeout``)."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    return [await exit_code(proc, timeout) for proc in procs]


def kill(proc: subprocess.Popen[Any]) -> Callable[[], None]:
    return lambda: os.kill(proc.pid, signal.SIGKILL)


def terminate(proc: subprocess.Popen[Any]) -> Callable[[], None]:
    return lambda: os.kill(proc.pid, signal.SIGTERM)


@pytest.fixture
async def env(tmp_path: Path, fake_llm: Any) -> AsyncIterator[Env]:
    telegram = ThreadedTelegram().start()
    procs: list[subprocess.Popen[Any]] = []
    try:
        async with own_database(tmp_path) as url:
            settings = Settings(database_url=url, secret_key=SECRET_KEY, worker_in_process=False,
                                telegram_api_base=telegram.url, _env_file=None)  # fmt: skip
            app = create_app(settings)
            try:
                async with app.router.lifespan_context(app):
                    world = await make_world(app.state.sessionmaker, settings, api_base=fake_llm.base_url)
                    await add_telegram_channel(app.state.sessionmaker, settings, world, BOT_TOKEN)
                    transport = httpx.ASGITransport(app=app)
                    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                        yield Env(tmp_path, url, app, client, world, telegram, procs)
            finally:  # every process gone before its database is dropped
                for proc in procs:
                    if proc.poll() is None:
                        proc.kill()
                    with contextlib.suppress(Exception):
                        proc.wait(10)
    finally:
        telegram.stop()
