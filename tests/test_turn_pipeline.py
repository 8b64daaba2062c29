"""The turn pipeline (app/services/turn.py) over the store of the database under test: the
same decisions on SQLite and PostgreSQL."""

import asyncio
import os

import pytest
from sqlalchemy import select, update

from app.models import Chatbot, ChatMessage, ChatSession

ON_POSTGRES = os.environ.get("CHATBOTS_TEST_DATABASE_URL", "").startswith("postgresql")


async def test_provider_failure_keeps_the_message_and_frees_the_session(client, world, db):
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
    async with db() as s:
        chat = await s.scalar(select(ChatSession).where(ChatSession.external_id == first.json()["session_id"]))
        contents = (await s.scalars(select(ChatMessage.content).where(ChatMessage.session_id == chat.id).order_by(ChatMessage.id))).all()
    assert contents == ["before", "echo: before", "lost?", "after", "echo: after"]
    assert chat.lease_until is None


async def test_a_newcomer_does_not_overtake_a_waiting_turns_ticket(app, client, world, db, ticket_taken):
    """A turn waiting for the session (its ticket, here of another process) goes first: a new
    message must not claim the free lease past it, and writes nothing until it is served."""
    from app.db import utcnow

    store = app.state.runtime.store
    first = await client.post(world.url, json={"message": "first"}, headers=world.headers)
    async with db() as s:
        chat_id = await s.scalar(select(ChatSession.id).where(ChatSession.external_id == first.json()["session_id"]))
    ticket = await store.take_ticket(chat_id, utcnow())
    ticket_taken.clear()
    later = asyncio.create_task(client.post(world.url, json={"message": "later"}, headers=world.headers))
    await asyncio.wait_for(ticket_taken.wait(), 5)  # its claim failed: it takes a ticket, waits
    await asyncio.sleep(0.05)
    assert not later.done()  # the turn waits its turn behind the earlier ticket
    async with db() as s:
        contents = (await s.scalars(select(ChatMessage.content).where(ChatMessage.session_id == chat_id))).all()
    assert sorted(contents) == ["echo: first", "first"]
    await store.drop_ticket(ticket)  # the waiting turn is served (or gives up)
    assert (await asyncio.wait_for(later, 10)).status_code == 200


@pytest.mark.skipif(not ON_POSTGRES, reason="the driver pool is PostgreSQL's")
async def test_the_driver_pool_plans_each_hot_path_statement_once(app):
    """PostgreSQL re-planned the hot path's prepared statements at every execution (about half
    of its time per turn, bench/RESULTS.md): the driver pool's sessions use generic plans."""
    async with app.state.driver_pool.acquire() as connection:
        assert await connection.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
