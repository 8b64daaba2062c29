"""The delivery guarantee (SPEC §6) with real processes: ``chatbots worker`` subprocesses killed
with SIGKILL, stopped with SIGTERM, racing each other over a batch, and ``chatbots serve``
running the worker in process by default.

The processes, their database and the fake Telegram: tests/worker_processes.py. Nothing of
ours is mocked."""

import asyncio
import signal
import time
from collections import Counter

import httpx

from tests.server import free_port, serve, wait_until_healthy
from tests.worker_processes import (  # noqa: F401 (env: a fixture)
    CONCURRENCY, SECRET_KEY, Env, Received, env, exit_code, kill, stop_all, terminate,
)


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
