"""The delivery guarantee (SPEC §6) with real processes: ``chatbots worker`` subprocesses killed
with SIGKILL, stopped with SIGTERM, racing each other over a batch, and ``chatbots serve``
running the worker in process by default.

Each test has a database of its own (a worker claims every due delivery in its database) and a
loopback fake of Telegram's Bot API served by an event loop on a thread of its own, so that it
answers while the test waits. Each worker process is given its own base URL on the fake
(``<fake>/<name>``: Telegram's URL is ``<base>/bot<token>/sendMessage``), so every request says
which process sent it. Nothing of ours is mocked."""

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
from app.services.admin_channels import create_channel
from tests.factories import World, make_world
from tests.own_database import own_database
from tests.server import free_port, serve, start_worker, wait_until_healthy

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
                    async with app.state.sessionmaker() as s:
                        await create_channel(s, settings, world.chatbot.public_id, "telegram",
                                             config={"bot_token": BOT_TOKEN})  # fmt: skip
                        await s.commit()
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


async def test_a_worker_killed_mid_batch_loses_nothing_and_resends_only_what_it_had_in_flight(env: Env) -> None:
    """SIGKILL as the 10th message reaches Telegram: the sends the killed worker had in flight
    (accepted or not, never recorded) come back when its 2 s lease ends, and two other workers
    finish the batch. Every message arrives; a resend is only of a message in flight at the
    kill, and once; each message is written once."""
    n = 60
    for i in range(n):
        await env.trigger(i)
    killed = env.worker("killed", delivery_lease_seconds="2")
    env.telegram.at(10, kill(killed))
    assert await exit_code(killed, 30) == -signal.SIGKILL, env.output()
    sent_at_kill = (await env.statuses())["sent"]  # all it recorded: it is gone

    others = [env.worker("a", delivery_lease_seconds="2"), env.worker("b", delivery_lease_seconds="2")]
    statuses = await env.until_all_sent(n, timeout=60)
    assert statuses == {"sent": n}, f"{statuses}\n{env.output()}"

    received = env.telegram.received()
    # Counted now, not at the kill: a request it wrote just before dying may reach the fake later.
    by_killed = [r for r in received if r.worker == "killed"]
    in_flight = len(by_killed) - sent_at_kill  # received by Telegram, never recorded as sent
    assert 1 <= in_flight <= CONCURRENCY, (len(by_killed), sent_at_kill)  # the 10th, at least
    counts = Counter(r.text for r in received)
    assert set(counts) == {f"m{i}" for i in range(n)}  # nothing lost
    assert all(r.chat_id == r.text[1:] for r in received)
    resent = {text: c for text, c in counts.items() if c > 1}
    killed_texts = Counter(r.text for r in by_killed)
    assert sum(c - 1 for c in resent.values()) <= in_flight, (resent, in_flight)
    assert all(c == 2 and killed_texts[text] == 1 for text, c in resent.items()), (resent, killed_texts)
    assert await env.ai_messages_per_delivery() == [1] * n  # written once, before the first send

    assert await stop_all(others) == [0, 0], env.output()


async def test_two_live_workers_racing_over_a_batch_send_each_message_exactly_once(env: Env) -> None:
    """80 deliveries waiting, two workers started together. The fake holds its answers until
    both have sent one, so both are at work on the batch at once."""
    n = 80
    for i in range(n):
        await env.trigger(i)
    env.telegram.hold_until_all_sent({"w1", "w2"})
    workers = [env.worker(name, delivery_lease_seconds="60") for name in ("w1", "w2")]
    statuses = await env.until_all_sent(n, timeout=60)
    assert statuses == {"sent": n}, f"{statuses}\n{env.output()}"

    received = env.telegram.received()
    assert sorted(r.text for r in received) == sorted(f"m{i}" for i in range(n))  # each exactly once
    assert all(r.chat_id == r.text[1:] for r in received)
    by_worker = Counter(r.worker for r in received)
    assert set(by_worker) == {"w1", "w2"}, by_worker
    assert await env.ai_messages_per_delivery() == [1] * n

    assert await stop_all(workers) == [0, 0], env.output()


async def test_sigterm_lets_the_sends_in_flight_finish(env: Env) -> None:
    """SIGTERM as the 5th of 5 slow sends (1 s each) reaches Telegram: the worker waits for
    their answers, records them, and exits 0; nothing is left ``sending``."""
    env.telegram.delay = 1.0
    for i in range(5):
        await env.trigger(i)
    worker = env.worker("w", delivery_lease_seconds="60")
    env.telegram.at(5, terminate(worker))
    assert await exit_code(worker, 30) == 0, env.output()
    assert await env.statuses() == {"sent": 5}, env.output()
    assert sorted(r.text for r in env.telegram.received()) == [f"m{i}" for i in range(5)]


async def test_chatbots_serve_delivers_in_process_by_default(env: Env) -> None:
    """``chatbots serve`` without CHATBOTS_WORKER_IN_PROCESS: a trigger_bot over real HTTP is
    sent by the server's own worker, exactly as given."""
    port = free_port()
    configured = {"database_url": env.database_url, "secret_key": SECRET_KEY,
                  "telegram_api_base": env.telegram.url_for("serve"), "log_level": "WARNING"}  # fmt: skip
    env.procs.append(serve(env.tmp_path, port, settings=configured))
    await asyncio.to_thread(wait_until_healthy, port, 30)
    text = "Your appointment is tomorrow at 10:00.\nReply STOP to opt out — ✓"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        body = {"identifier": "4242", "platform": "telegram",
                "experiment": str(env.world.chatbot.public_id), "message_text": text}  # fmt: skip
        response = await http.post("/api/trigger_bot", json=body, headers=env.world.headers)
        assert response.status_code == 200, response.text
        delivery_id = response.json()["delivery_id"]
        deadline = time.monotonic() + 20
        while True:
            status = await http.get(f"/api/deliveries/{delivery_id}", headers=env.world.headers)
            assert status.status_code == 200, status.text
            if status.json()["status"] == "sent" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    assert status.json()["status"] == "sent", status.json()
    assert status.json()["attempts"] == 1
    assert env.telegram.received() == [Received("serve", "4242", text)]
