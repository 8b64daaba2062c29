"""The compose topology as plain processes (README "Scaling out"): two ``chatbots serve``
processes with the worker off and two ``chatbots worker`` processes on one database, and the
client picking the API (the load balancer's part). What one process cannot show: the same new
user's first messages arriving at both APIs at once, and deliveries triggered through both
and sent by two workers.

The database, the loopback fake Telegram and the worker processes are those of
tests/worker_processes.py (its ``env`` fixture); tests/test_real_server.py covers one
server's two worker processes taking one session's turns, so here every session is new.

On SQLite too: compose's topology is PostgreSQL, but the README promises that several processes
share the embedded database safely (the open-session unique index, the atomic delivery claim,
turns that poll), and these two tests are where that is checked across processes."""

import asyncio
from collections import Counter
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import func, select

from app.models import ChatMessage, ChatSession, Delivery, Participant
from tests.factories import add_key, add_user
from tests.server import free_port, serve, wait_until_healthy
from tests.worker_processes import SECRET_KEY, Env, env, stop_all  # noqa: F401 (env: a fixture)

USERS = 12
MESSAGES_PER_USER = 4  # first messages per user, sent together, alternating over the two APIs
TRIGGERS = 40


@dataclass
class Topology:
    apis: list[str]  # base URLs


@pytest.fixture
async def topology(env: Env) -> Topology:
    """Two API processes (CHATBOTS_WORKER_IN_PROCESS=false) and two delivery workers on the
    env's database; the env's fixture stops them all."""
    ports = [free_port(), free_port()]
    for port in ports:
        settings = {"database_url": env.database_url, "secret_key": SECRET_KEY,
                    "worker_in_process": "false", "auto_migrate": "false", "log_level": "WARNING",
                    "telegram_api_base": env.telegram.url_for("api")}  # fmt: skip
        env.procs.append(serve(env.tmp_path, port, settings=settings))
    for name in ("w1", "w2"):
        env.worker(name, delivery_lease_seconds="60")
    await asyncio.gather(*(asyncio.to_thread(wait_until_healthy, port, 30) for port in ports))
    return Topology([f"http://127.0.0.1:{port}" for port in ports])


async def _new_users(env: Env, count: int) -> list[str]:
    """``count`` members of the env's team, each with a write key: their keys."""
    async with env.app.state.sessionmaker() as s:
        keys = [await add_key(s, env.world.team, await add_user(s, env.world.team)) for _ in range(count)]
        await s.commit()
    return keys


async def test_first_messages_of_new_users_through_both_api_processes_at_once_open_one_participant_and_session_each(
    env: Env, topology: Topology
) -> None:
    """Each new user's first four messages leave together, on connections already open, two to
    each API: every message is answered in the user's one session, and the database holds one
    participant and one session per user with all four messages in it."""
    keys = await _new_users(env, USERS)
    clients = [httpx.AsyncClient(base_url=base, timeout=30) for base in topology.apis]
    try:
        for client in clients:  # connections open before the first messages leave
            assert (await client.get("/healthz")).status_code == 200
        sends = [(user, clients[j % 2].post(env.world.url, json={"message": f"first {j} of {user}"},
                                            headers={"X-api-key": key}))
                 for user, key in enumerate(keys) for j in range(MESSAGES_PER_USER)]  # fmt: skip
        responses = await asyncio.gather(*(send for _, send in sends))
    finally:
        for client in clients:
            await client.aclose()
    assert [r.status_code for r in responses] == [200] * len(sends), [r.text for r in responses if r.status_code != 200]
    answered_in: dict[int, set[str]] = {}
    for (user, _), response in zip(sends, responses, strict=True):
        answered_in.setdefault(user, set()).add(response.json()["session_id"])
    assert all(len(sessions) == 1 for sessions in answered_in.values()), answered_in

    async with env.app.state.sessionmaker() as s:
        rows = (await s.execute(
            select(Participant.user_id, func.count(func.distinct(ChatSession.id)),
                   func.count(ChatMessage.id).filter(ChatMessage.role == "human"))
            .join(ChatSession, ChatSession.participant_id == Participant.id)
            .join(ChatMessage, ChatMessage.session_id == ChatSession.id)
            .where(Participant.team_id == env.world.team.id, Participant.user_id.is_not(None))
            .group_by(Participant.id, Participant.user_id)
        )).all()  # fmt: skip
    by_user = Counter(user_id for user_id, _, _ in rows)
    assert len(rows) == USERS and set(by_user.values()) == {1}, rows  # one participant each
    assert {(sessions, human) for _, sessions, human in rows} == {(1, MESSAGES_PER_USER)}, rows


async def test_triggers_through_both_api_processes_are_sent_once_each_by_the_two_workers(
    env: Env, topology: Topology
) -> None:
    """40 triggers to new Telegram chats, alternating over the two APIs and sent together: every
    chat receives its message exactly once, between the two workers, and every delivery is
    ``sent`` after one attempt."""
    env.telegram.hold_until_all_sent({"w1", "w2"})  # both workers at work at once
    clients = [httpx.AsyncClient(base_url=base, timeout=30) for base in topology.apis]
    try:
        responses = await asyncio.gather(*(
            clients[i % 2].post("/api/trigger_bot", headers=env.world.headers, json={
                "identifier": str(i), "platform": "telegram",
                "experiment": str(env.world.chatbot.public_id), "message_text": f"m{i}"})
            for i in range(TRIGGERS)
        ))  # fmt: skip
    finally:
        for client in clients:
            await client.aclose()
    assert [r.status_code for r in responses] == [200] * TRIGGERS, [r.text for r in responses]

    statuses = await env.until_all_sent(TRIGGERS, timeout=20)
    assert statuses == {"sent": TRIGGERS}, f"{statuses}\n{env.output()}"
    received = env.telegram.received()
    assert sorted((r.chat_id, r.text) for r in received) == sorted((str(i), f"m{i}") for i in range(TRIGGERS))
    assert {r.worker for r in received} == {"w1", "w2"}, received  # both, never an API process
    async with env.app.state.sessionmaker() as s:
        attempts = (await s.scalars(select(Delivery.attempts))).all()
    assert attempts == [1] * TRIGGERS
    assert await stop_all([p for p in env.procs if p.args[-1] == "worker"]) == [0, 0], env.output()

