"""Concurrent requests: one session per participant, one turn at a time per session, and
Idempotency-Key replay. The LLM answers slowly (fake server, 300 ms) so requests overlap."""

import asyncio

import pytest
from sqlalchemy import func, select, update

from app.models import ApiKey, ChatMessage, ChatSession
from tests.factories import make_world


async def _count(db, model, **where) -> int:  # type: ignore[no-untyped-def]
    async with db() as s:
        q = select(func.count()).select_from(model)
        for k, v in where.items():
            q = q.where(getattr(model, k) == v)
        return await s.scalar(q)


async def test_two_simultaneous_first_messages_create_one_session(client, db, settings, fake_llm):
    world = await make_world(db, settings, api_base=fake_llm.base_url, model="latency-300")
    a, b = await asyncio.gather(
        client.post(world.url, json={"message": "first A"}, headers=world.headers),
        client.post(world.url, json={"message": "first B"}, headers=world.headers),
    )
    assert a.status_code == b.status_code == 200, (a.text, b.text)
    assert a.json()["session_id"] == b.json()["session_id"]
    assert await _count(db, ChatSession, team_id=world.team.id) == 1


async def test_messages_in_one_session_are_processed_one_after_the_other(client, db, settings, fake_llm):
    world = await make_world(db, settings, api_base=fake_llm.base_url, model="latency-300")
    first = await client.post(world.url, json={"message": "start"}, headers=world.headers)
    sid = first.json()["session_id"]
    texts = ["concurrent one", "concurrent two", "concurrent three"]
    responses = await asyncio.gather(
        *(client.post(world.url, json={"message": t, "session": sid}, headers=world.headers) for t in texts)
    )
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    async with db() as s:
        chat = await s.scalar(select(ChatSession).where(ChatSession.external_id == sid))
        rows = (await s.scalars(select(ChatMessage).where(ChatMessage.session_id == chat.id).order_by(ChatMessage.id))).all()
    roles = [m.role for m in rows]
    # Strict alternation: no human message was stored while another turn was in flight.
    assert roles == ["human", "ai"] * 4
    # Each later turn saw the earlier ones in its history.
    sent = {r["messages"][-1]["content"]: r for r in fake_llm.requests() if r["messages"][-1]["content"] in texts}
    seen = sorted(len(sent[t]["messages"]) for t in texts)
    assert seen == [4, 6, 8]  # system + history + new message, growing by one turn each time
    assert chat.lease_until is None


async def test_idempotency_key_replays_the_first_response_without_a_second_turn(client, world, db):
    headers = {**world.headers, "Idempotency-Key": "order-42"}
    first = await client.post(world.url, json={"message": "pay once"}, headers=headers)
    again = await client.post(world.url, json={"message": "pay once"}, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    async with db() as s:
        chat = await s.scalar(select(ChatSession).where(ChatSession.external_id == first.json()["session_id"]))
    assert await _count(db, ChatMessage, session_id=chat.id) == 2


async def test_idempotency_key_in_flight_repeat_gets_409(client, db, settings, fake_llm):
    world = await make_world(db, settings, api_base=fake_llm.base_url, model="latency-400")
    headers = {**world.headers, "Idempotency-Key": "slow-1"}
    first, second = await asyncio.gather(
        client.post(world.url, json={"message": "slow"}, headers=headers),
        _after(0.15, client.post(world.url, json={"message": "slow"}, headers=headers)),
    )
    assert first.status_code == 200
    assert second.status_code == 409
    assert second.json() == {"detail": "A request with this Idempotency-Key is already in progress."}


async def test_idempotency_key_with_a_different_body_is_rejected(client, world):
    headers = {**world.headers, "Idempotency-Key": "k-1"}
    assert (await client.post(world.url, json={"message": "a"}, headers=headers)).status_code == 200
    r = await client.post(world.url, json={"message": "b"}, headers=headers)
    assert r.status_code == 400
    assert r.json() == {"detail": "This Idempotency-Key was already used with a different request."}


async def test_failed_request_releases_its_idempotency_key(client, db, settings, fake_llm):
    world = await make_world(db, settings, api_base=fake_llm.base_url, model="fail-500")
    headers = {**world.headers, "Idempotency-Key": "retry-me"}
    assert (await client.post(world.url, json={"message": "x"}, headers=headers)).status_code == 502
    assert (await client.post(world.url, json={"message": "x"}, headers=headers)).status_code == 502


async def test_idempotency_keys_are_scoped_to_the_credential(client, db, settings, fake_llm):
    one = await make_world(db, settings, api_base=fake_llm.base_url)
    two = await make_world(db, settings, api_base=fake_llm.base_url)
    r1 = await client.post(one.url, json={"message": "same"}, headers={**one.headers, "Idempotency-Key": "shared"})
    r2 = await client.post(two.url, json={"message": "same"}, headers={**two.headers, "Idempotency-Key": "shared"})
    assert r1.status_code == r2.status_code == 200
    assert r1.json()["session_id"] != r2.json()["session_id"]


async def _after(delay: float, coro):  # type: ignore[no-untyped-def]
    await asyncio.sleep(delay)
    return await coro


@pytest.mark.parametrize("turn_kind", ["first message", "steady state, key due for last_used_at"])
async def test_no_database_connection_is_held_while_the_llm_answers(client, app, db, settings, fake_llm, turn_kind):
    """Also for a turn whose key is due for its (once a minute) last_used_at write: on
    PostgreSQL the steady-state turn runs on the driver pool, and that write must not keep a
    SQLAlchemy transaction open across the LLM call."""
    world = await make_world(db, settings, api_base=fake_llm.base_url, model="latency-600")
    body: dict[str, str] = {}
    if turn_kind != "first message":
        first = await client.post(world.url, json={"message": "hello"}, headers=world.headers)
        body["session"] = first.json()["session_id"]
        async with db() as s:
            await s.execute(update(ApiKey).where(ApiKey.team_id == world.team.id).values(last_used_at=None))
            await s.commit()
    text = f"are you holding a connection {world.team.slug}"
    turn = asyncio.create_task(client.post(world.url, json={"message": text, **body}, headers=world.headers))
    for _ in range(200):  # wait until the fake LLM has the request: the turn is mid-call
        if any(r["messages"][-1]["content"] == text for r in fake_llm.requests()):
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the LLM never received the request")
    assert app.state.engine.pool.checkedout() == 0
    driver_pool = app.state.driver_pool  # PostgreSQL's hot-path pool
    if driver_pool is not None:
        assert driver_pool.get_size() == driver_pool.get_idle_size()
    # ...and the human message is already committed, visible to another connection.
    async with db() as s:
        stored = await s.scalar(select(func.count()).select_from(ChatMessage).where(ChatMessage.content == text))
    assert stored == 1
    assert (await turn).status_code == 200
    async with db() as s:  # ...and the key's use was recorded
        last_used = await s.scalar(select(ApiKey.last_used_at).where(ApiKey.team_id == world.team.id))
    assert last_used is not None


async def _set_lease(db, session_id: str, until) -> None:  # type: ignore[no-untyped-def]
    async with db() as s:
        await s.execute(update(ChatSession).where(ChatSession.external_id == session_id).values(lease_until=until))
        await s.commit()


async def test_a_lease_held_by_another_process_is_waited_for(client, world, db, ticket_taken):
    """Another process mid-turn (its lease set in the database): the turn waits for it."""
    from datetime import timedelta

    from app.db import utcnow

    sid = (await client.post(world.url, json={"message": "one"}, headers=world.headers)).json()["session_id"]
    await _set_lease(db, sid, utcnow() + timedelta(seconds=60))
    turn = asyncio.create_task(client.post(world.url, json={"message": "two"}, headers=world.headers))
    await asyncio.wait_for(ticket_taken.wait(), 5)  # it found the session busy: it waits
    await asyncio.sleep(0.05)
    assert not turn.done()  # queued behind the other process's turn
    await _set_lease(db, sid, None)  # that turn ends
    r = await asyncio.wait_for(turn, 5)
    assert r.status_code == 200 and r.json()["session_id"] == sid


async def test_an_expired_lease_of_a_crashed_process_does_not_block(client, world, db):
    from datetime import timedelta

    from app.db import utcnow

    sid = (await client.post(world.url, json={"message": "one"}, headers=world.headers)).json()["session_id"]
    await _set_lease(db, sid, utcnow() - timedelta(seconds=1))
    r = await asyncio.wait_for(client.post(world.url, json={"message": "two"}, headers=world.headers), 5)
    assert r.status_code == 200 and r.json()["session_id"] == sid


async def test_a_message_queued_behind_a_reset_goes_to_the_new_session(client, db, settings, fake_llm):
    world = await make_world(db, settings, api_base=fake_llm.base_url, model="latency-300")
    first = await client.post(world.url, json={"message": "hello"}, headers=world.headers)
    old = first.json()["session_id"]
    slow = asyncio.create_task(client.post(world.url, json={"message": "slow turn"}, headers=world.headers))
    await asyncio.sleep(0.1)
    reset = asyncio.create_task(client.post(world.url, json={"message": "/reset"}, headers=world.headers))
    await asyncio.sleep(0.05)
    after = asyncio.create_task(client.post(world.url, json={"message": "after reset"}, headers=world.headers))
    slow_r, reset_r, after_r = await asyncio.gather(slow, reset, after)
    assert slow_r.json()["session_id"] == old
    new = reset_r.json()["session_id"]
    assert reset_r.json()["response"] == "Conversation reset" and new != old
    assert after_r.status_code == 200 and after_r.json()["session_id"] == new


async def test_pools_of_one_connection_serve_concurrent_turns(settings, db, fake_llm):
    """No request holds a pooled connection while it waits for another one (with the small
    default pools a busy worker would deadlock): a worker whose pools hold ONE connection each
    serves concurrent first messages, concurrent turns in one session, and steady-state turns
    whose keys are due for their last_used_at write."""
    import httpx

    from app.main import create_app

    small = create_app(settings.model_copy(update={"database_pool_size": 1, "database_max_overflow": 0}))
    worlds = [await make_world(db, settings, api_base=fake_llm.base_url, model="latency-50") for _ in range(4)]
    async with small.router.lifespan_context(small):
        transport = httpx.ASGITransport(app=small)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

            async def send(world, text: str, **extra: str):  # type: ignore[no-untyped-def]
                response = await client.post(world.url, json={"message": text, **extra}, headers=world.headers)
                assert response.status_code == 200, response.text
                return response.json()["session_id"]

            firsts = await asyncio.wait_for(asyncio.gather(*(send(w, "hello") for w in worlds)), 30)
            async with db() as s:
                team_ids = [w.team.id for w in worlds]
                await s.execute(update(ApiKey).where(ApiKey.team_id.in_(team_ids)).values(last_used_at=None))
                await s.commit()
            turns = [send(w, f"turn {i}", session=sid) for w, sid in zip(worlds, firsts) for i in range(3)]
            await asyncio.wait_for(asyncio.gather(*turns), 30)
    for world, sid in zip(worlds, firsts):
        assert await _count(db, ChatMessage, session_id=await _session_pk(db, sid)) == 8
        async with db() as s:
            assert await s.scalar(select(ApiKey.last_used_at).where(ApiKey.team_id == world.team.id)) is not None


async def _session_pk(db, external_id: str) -> int:  # type: ignore[no-untyped-def]
    async with db() as s:
        return await s.scalar(select(ChatSession.id).where(ChatSession.external_id == external_id))
