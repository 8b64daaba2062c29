"""PostgreSQL crashes under a real ``chatbots serve`` (its delivery worker in process) and is
started again: 503 with Retry-After while it is down, 200s within seconds of its return
without restarting the service, no message of a 200 lost, and the delivery in flight at the
crash sent again by the same worker.

PostgreSQL suite only, on a cluster of the test's OWN (``.ci/start-postgres`` on a free port and
a PGDATA of its own, then commits made durable as in production), never the suite's shared
server: the crash is SIGKILL of its postmaster and backends (``bench/pgcrash.py``, which the
outage benchmark uses too), the restart ``pg_ctl start`` on the same PGDATA.

The crash is timed by the fake Telegram: it happens as the delivery's send reaches it, while
the turns in flight are waiting for the (slow) model, holding their sessions' leases."""

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from app.config import Settings
from app.main import create_app
from app.migrate import upgrade_database_sync
from app.services.admin_channels import create_channel
from bench import pgcrash
from bench.processes import Postgres
from tests.factories import add_key, add_user, make_world
from tests.server import free_port, serve, wait_until_healthy
from tests.worker_processes import BOT_TOKEN, SECRET_KEY, ThreadedTelegram

pytestmark = pytest.mark.skipif(
    not os.environ.get("CHATBOTS_TEST_DATABASE_URL", "").startswith("postgresql"),
    reason="PostgreSQL suite only (the test runs and crashes a PostgreSQL cluster of its own)",
)

USERS = 3
MODEL_MS = 2000  # the turns in flight at the crash are in their model call
RECOVERY_S = 5.0
UNAVAILABLE = {"detail": "Service temporarily unavailable."}


@contextlib.asynccontextmanager
async def own_cluster() -> AsyncIterator[tuple[Postgres, str]]:
    """A migrated database on a PostgreSQL cluster of this test's own, commits durable. PGDATA
    is under /tmp (not tmp_path: as root the cluster runs as ``postgres``, who cannot enter
    pytest's root-only directories)."""
    pg = Postgres(free_port(), f"/tmp/chatbots-outage-test-{uuid.uuid4().hex[:10]}", "chatbots_outage")
    try:
        url = await asyncio.to_thread(pg.start)
        await asyncio.to_thread(pgcrash.restart, pg, pgcrash.durable(pgcrash.server_options(pg)))
        await asyncio.to_thread(upgrade_database_sync, url)
        yield pg, url
    finally:
        await asyncio.to_thread(pg.stop)


async def _arrange(url: str, fake_llm: Any) -> tuple[str, list[str]]:
    """A published chatbot on the slow model with a telegram channel; its public id and the
    write keys of USERS team members."""
    settings = Settings(database_url=url, secret_key=SECRET_KEY, worker_in_process=False, _env_file=None)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        world = await make_world(app.state.sessionmaker, settings, api_base=fake_llm.base_url,
                                 model=f"latency-{MODEL_MS}")  # fmt: skip
        keys = [world.key]
        async with app.state.sessionmaker() as s:
            await create_channel(s, settings, world.chatbot.public_id, "telegram", config={"bot_token": BOT_TOKEN})
            for _ in range(USERS - 1):
                keys.append(await add_key(s, world.team, await add_user(s, world.team)))
            await s.commit()
    return str(world.chatbot.public_id), keys


async def _messages_of(url: str, texts: list[str]) -> list[str]:
    """Of ``texts``, those stored as a human message followed by an AI message."""
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        rows = await conn.fetch(
            "SELECT content FROM (SELECT content, role, lead(role) OVER (PARTITION BY session_id"
            " ORDER BY created_at, id) AS next_role FROM chat_message) m"
            " WHERE role = 'human' AND next_role = 'ai' AND content = ANY($1::text[])", texts,
        )  # fmt: skip
        return sorted(r[0] for r in rows)
    finally:
        await conn.close()


async def _delivery(url: str) -> tuple[str, int]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        row = await conn.fetchrow("SELECT status, attempts FROM delivery")
        return row["status"], row["attempts"]
    finally:
        await conn.close()


async def test_postgres_crash_under_load_503s_then_recovers_without_a_restart(tmp_path: Path, fake_llm: Any) -> None:
    telegram = ThreadedTelegram(delay=0.2).start()
    try:
        async with own_cluster() as (pg, url):
            chatbot, keys = await _arrange(url, fake_llm)
            port = free_port()
            log = tmp_path / "serve.log"
            proc = serve(tmp_path, port, log=log, settings={
                "database_url": url, "secret_key": SECRET_KEY, "log_level": "WARNING",
                "telegram_api_base": telegram.url_for("serve"), "auto_migrate": "false",
                "delivery_lease_seconds": "3", "delivery_poll_seconds": "0.5",
            })  # fmt: skip
            try:
                await _story(pg, url, chatbot, keys, port, proc, log, telegram, fake_llm)
            finally:
                proc.terminate()
                with contextlib.suppress(Exception):
                    proc.wait(10)
    finally:
        telegram.stop()


async def _story(pg: Postgres, url: str, chatbot: str, keys: list[str], port: int, proc: Any, log: Path,
                 telegram: ThreadedTelegram, fake_llm: Any) -> None:  # fmt: skip
    await asyncio.to_thread(wait_until_healthy, port, 30)
    crashed = asyncio.Event()
    loop = asyncio.get_running_loop()
    telegram.at(1, lambda: (pgcrash.kill(pg), loop.call_soon_threadsafe(crashed.set)))

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:

        async def say(i: int, text: str) -> httpx.Response:
            return await http.post(f"/channels/api/{chatbot}/incoming_message", json={"message": text},
                                   headers={"X-api-key": keys[i]})  # fmt: skip

        before = await asyncio.gather(*(say(i, f"before {i}") for i in range(USERS)))
        assert [r.status_code for r in before] == [200] * USERS, [r.text for r in before]

        # Turns in their model call (each holding its session's lease), then a delivery
        # whose send reaching Telegram crashes PostgreSQL.
        in_flight = [asyncio.create_task(say(i, f"in flight {i}")) for i in range(USERS)]
        while len([r for r in fake_llm.requests() if "in flight" in str(r["messages"][-1])]) < USERS:
            await asyncio.sleep(0.02)
        trigger = await http.post("/api/trigger_bot", headers={"X-api-key": keys[0]}, json={
            "identifier": "777", "platform": "telegram", "experiment": chatbot,
            "message_text": "Your appointment is tomorrow."})  # fmt: skip
        assert trigger.status_code == 200, trigger.text
        await asyncio.wait_for(crashed.wait(), 20)

        for response in await asyncio.gather(*in_flight):
            assert response.status_code in (200, 503), response.text
        while_down = [await say(0, f"while down {n}") for n in range(3)]
        for response in while_down:
            assert response.status_code == 503, response.text
            assert response.json() == UNAVAILABLE
            assert response.headers["retry-after"] == "5"

        await asyncio.to_thread(pgcrash.start, pg, pgcrash.durable(pgcrash.server_options(pg)))
        back = time.monotonic()
        # The same users' sessions: the turns cut off by the crash gave their leases
        # back once the database returned (else these would wait the whole lease, 120 s).
        after = await asyncio.gather(*(say(i, f"after {i}") for i in range(USERS)))
        answered_in = time.monotonic() - back
        assert [r.status_code for r in after] == [200] * USERS, [r.text for r in after]
        assert answered_in <= RECOVERY_S + MODEL_MS / 1000, answered_in
        assert proc.poll() is None, "the service restarted or died"

        ok = [f"before {i}" for i in range(USERS)] + [f"after {i}" for i in range(USERS)]
        ok += [f"in flight {i}" for i, r in enumerate(in_flight) if r.result().status_code == 200]
        assert await _messages_of(url, ok) == sorted(ok)

        # The send in flight at the crash was never recorded: its claim lapses (3 s)
        # and the same worker sends it again.
        deadline = time.monotonic() + 20
        while (status := await _delivery(url))[0] != "sent" and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert status == ("sent", 2), (status, log.read_text()[-3000:])
        assert [r.chat_id for r in telegram.received()] == ["777", "777"]
        assert proc.poll() is None
