"""Against real ``chatbots serve`` processes on the database under test (real sockets, real
worker processes): what an ASGI test client cannot show."""

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from sqlalchemy import select, text

from app.db import utcnow

from app.models import ChatMessage, ChatSession
from tests.factories import make_world
from tests.server import free_port, serve, wait_until_healthy

STAGGER = 0.04  # seconds between two messages' departures
ON_POSTGRES = os.environ.get("CHATBOTS_TEST_DATABASE_URL", "").startswith("postgresql")


@pytest.fixture
def start_server(tmp_path, settings) -> Iterator[Callable[..., str]]:  # type: ignore[no-untyped-def]
    """Start ``chatbots serve`` on the test database; returns its base URL. Stopped at the end."""
    procs = []

    def start(workers: int = 1, **extra: str) -> str:
        port = free_port()
        configured = {"database_url": settings.database_url, "secret_key": settings.secret_key,
                      "log_level": "WARNING", **extra}  # fmt: skip
        procs.append(serve(tmp_path, port, settings=configured, workers=workers))
        wait_until_healthy(port)
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in procs:
        proc.terminate()
        with contextlib.suppress(Exception):
            proc.wait(10)


async def _stored(db, external_id: str) -> list[ChatMessage]:  # type: ignore[no-untyped-def]
    async with db() as s:
        session_id = await s.scalar(select(ChatSession.id).where(ChatSession.external_id == external_id))
        return list((await s.scalars(
            select(ChatMessage).where(ChatMessage.session_id == session_id).order_by(ChatMessage.id)
        )).all())  # fmt: skip


@pytest.mark.skipif(not ON_POSTGRES, reason="turns of several processes wait on PostgreSQL's NOTIFY")
async def test_two_worker_processes_take_one_sessions_turns_one_at_a_time_in_about_arrival_order(
    start_server, db, settings, fake_llm
):
    """16 messages to one session, 40 ms apart, each on its own connection (the kernel spreads
    them over both workers); the model takes 100 ms, so they queue. Waiting turns take tickets
    (served lowest first, whichever process holds them) and are woken by the release's
    notification, not by a poll: the run takes about the model's time, in arrival order."""
    world = await make_world(db, settings, api_base=fake_llm.base_url, model="latency-100")
    server_started = utcnow()
    base = start_server(workers=2)
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        first = await http.post(world.url, json={"message": "start"}, headers=world.headers)
    session = first.json()["session_id"]

    async def send(i: int) -> httpx.Response:
        await asyncio.sleep(i * STAGGER)
        async with httpx.AsyncClient(base_url=base, timeout=60) as own:
            return await own.post(world.url, json={"message": f"message {i}", "session": session},
                                  headers=world.headers)  # fmt: skip

    started = time.monotonic()
    responses = await asyncio.gather(*(send(i) for i in range(16)))
    elapsed = time.monotonic() - started
    assert [r.status_code for r in responses] == [200] * 16, [r.text for r in responses]
    stored = await _stored(db, session)
    assert [m.role for m in stored] == ["human", "ai"] * 17  # one turn at a time
    order = [int(m.content.rsplit(" ", 1)[1]) for m in stored[2::2]]
    assert sorted(order) == list(range(16))
    displacement = max(abs(position - sent) for position, sent in enumerate(order))
    assert displacement <= 2, order  # arrival order, give or take the network's jitter
    # 16 turns of ~105 ms each, one after the other: no turn waited for a poll or a lease expiry.
    assert elapsed < 16 * 0.105 + 2.0, elapsed
    async with db() as s:  # both processes had turns waiting: each opened its LISTEN connection
        listening = await s.scalar(text(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %chatbots_session_released%' AND backend_start >= :t"
        ), {"t": server_started})  # fmt: skip
    assert listening == 2


async def test_a_client_that_stalls_in_its_body_does_not_stop_other_tenants(
    start_server, db, settings, fake_llm
):
    """Headers and the start of a body, then nothing: no transaction (on SQLite, no write
    lock) may be held while the body is read, so another tenant chats meanwhile; the stalled
    client gets 408 once the body timeout passes."""
    staller = await make_world(db, settings, api_base=fake_llm.base_url)
    other = await make_world(db, settings, api_base=fake_llm.base_url)
    base = start_server(body_timeout_seconds="3")
    port = int(base.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = (
            f"POST {staller.url} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-api-key: {staller.key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        )
        writer.write(head.encode() + b'{"mess')
        await writer.drain()
        await asyncio.sleep(0.5)  # authenticated (its first use: last_used_at written), reading

        started = time.monotonic()
        async with httpx.AsyncClient(base_url=base, timeout=20) as http:
            chat = await http.post(other.url, json={"message": "still there?"}, headers=other.headers)
            ready = await http.get("/readyz")
        assert chat.status_code == 200, chat.text
        assert chat.json()["response"] == "echo: still there?"
        assert ready.status_code == 200, ready.text
        assert time.monotonic() - started < 2.5
        answer = await asyncio.wait_for(reader.read(), 10)  # to EOF: the 408 closes the connection
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"Timed out reading the request body." in answer
    finally:
        writer.close()
