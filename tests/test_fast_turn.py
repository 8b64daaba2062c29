"""On PostgreSQL the steady-state turn runs on the driver (app/services/fast_turn.py); anything
else falls back to the general path. The rest of the suite checks that both store the same
things; these tests check which path served a turn, by recording what the fast path returned
(a spy around the real function: its behaviour is unchanged)."""

import os

import pytest
from sqlalchemy import select

import app.services.conversation as conversation
from app.models import ChatMessage, ChatSession

pytestmark = pytest.mark.skipif(
    not os.environ.get("CHATBOTS_TEST_DATABASE_URL", "").startswith("postgresql"),
    reason="the driver fast path is PostgreSQL's",
)


@pytest.fixture
def served(monkeypatch):  # type: ignore[no-untyped-def]
    outcomes: list[str] = []
    real = conversation.try_fast_turn

    async def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            result = await real(*args, **kwargs)
        except Exception:
            outcomes.append("fast, raised")
            raise
        outcomes.append("fast" if result is not None else "general")
        return result

    monkeypatch.setattr(conversation, "try_fast_turn", spy)
    return outcomes


async def test_first_message_is_general_then_steady_state_is_fast(client, world, db, served):
    first = await client.post(world.url, json={"message": "first"}, headers=world.headers)
    second = await client.post(world.url, json={"message": "second"}, headers=world.headers)
    named = await client.post(world.url, json={"message": "third", "session": first.json()["session_id"]}, headers=world.headers)
    assert [r.status_code for r in (first, second, named)] == [200, 200, 200]
    assert served == ["general", "fast", "fast"]
    async with db() as s:
        chat = await s.scalar(select(ChatSession).where(ChatSession.external_id == first.json()["session_id"]))
        rows = (await s.scalars(select(ChatMessage).where(ChatMessage.session_id == chat.id).order_by(ChatMessage.id))).all()
    assert [(m.role, m.content) for m in rows] == [
        ("human", "first"), ("ai", "echo: first"), ("human", "second"), ("ai", "echo: second"),
        ("human", "third"), ("ai", "echo: third"),
    ]
    assert all(m.version_label == "v1" for m in rows if m.role == "ai")
    assert rows[-1].message_metadata["usage"]["total_tokens"] > 0
    assert chat.status == "active" and chat.versions_seen == [1] and chat.lease_until is None


async def test_reset_and_unknown_versions_take_the_general_path(client, world, served):
    await client.post(world.url, json={"message": "hello"}, headers=world.headers)
    reset = await client.post(world.url, json={"message": "/reset"}, headers=world.headers)
    missing = await client.post(world.version_url(99), json={"message": "x"}, headers=world.headers)
    assert reset.json()["response"] == "Conversation reset"
    assert missing.status_code == 404
    assert served == ["general", "general", "general"]


async def test_provider_failure_on_the_fast_path_keeps_the_message_and_frees_the_session(client, world, db, served):
    from sqlalchemy import update

    from app.models import Chatbot

    async def use_model(model: str) -> None:
        async with db() as s:
            await s.execute(update(Chatbot).where(Chatbot.team_id == world.team.id).values(llm_model=model))
            await s.commit()

    first = await client.post(world.url, json={"message": "before"}, headers=world.headers)
    await use_model("fail-500")
    failed = await client.post(world.url, json={"message": "lost?"}, headers=world.headers)
    await use_model("fake-model")
    after = await client.post(world.url, json={"message": "after"}, headers=world.headers)
    assert (first.status_code, failed.status_code, after.status_code) == (200, 502, 200)
    assert failed.json()["session_id"] == first.json()["session_id"]
    assert served == ["general", "fast, raised", "fast"]
    async with db() as s:
        chat = await s.scalar(select(ChatSession).where(ChatSession.external_id == first.json()["session_id"]))
        contents = (await s.scalars(select(ChatMessage.content).where(ChatMessage.session_id == chat.id).order_by(ChatMessage.id))).all()
    assert contents == ["before", "echo: before", "lost?", "after", "echo: after"]
    assert chat.lease_until is None


async def test_a_session_queued_in_this_process_is_left_to_its_queue(client, world, db, served):
    """A turn of this process holding or waiting for the session (its in-process queue) goes
    first: the fast path must not claim the free lease past it, and writes nothing."""
    import asyncio

    from app.services.sessions import local_turn

    first = await client.post(world.url, json={"message": "first"}, headers=world.headers)
    async with db() as s:
        chat_id = await s.scalar(select(ChatSession.id).where(ChatSession.external_id == first.json()["session_id"]))
    async with local_turn(chat_id):  # as a turn of this process that holds the session
        later = asyncio.create_task(client.post(world.url, json={"message": "later"}, headers=world.headers))
        for _ in range(200):
            if len(served) == 2 or later.done():
                break
            await asyncio.sleep(0.01)
        assert served == ["general", "general"]  # the fast path declined...
        await asyncio.sleep(0.1)
        assert not later.done()  # ...and the turn waits its turn behind the holder
        async with db() as s:
            contents = (await s.scalars(select(ChatMessage.content).where(ChatMessage.session_id == chat_id))).all()
        assert sorted(contents) == ["echo: first", "first"]
    assert (await later).status_code == 200


async def test_the_driver_pool_plans_each_hot_path_statement_once(app):
    """PostgreSQL re-planned the hot path's prepared statements at every execution (about half
    of its time per turn, bench/RESULTS.md): the driver pool's sessions use generic plans."""
    async with app.state.driver_pool.acquire() as connection:
        assert await connection.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
