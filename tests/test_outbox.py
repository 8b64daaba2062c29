"""The delivery outbox (app/channels/outbox.py) on the database under test: claims under a
lease, disjoint batches for concurrent workers, and each attempt's outcome."""

import asyncio
import random
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from app.channels import outbox
from app.channels.base import SendFailed
from app.db import utcnow
from app.models import Channel, ChatSession, Delivery, DeliveryStatus, Participant
from tests.factories import make_world

LEASE = 60.0
RNG = random.Random(7)


@pytest.fixture
async def make_delivery(app, db, settings, fake_llm):  # type: ignore[no-untyped-def]
    """Deliveries on a new team's telegram channel, due now unless told otherwise."""
    world = await make_world(db, settings, api_base=fake_llm.base_url)
    async with db() as s:
        channel = Channel(team_id=world.team.id, chatbot_id=world.chatbot.id, platform="telegram",
                          name="tg", config={})  # fmt: skip
        participant = Participant(team_id=world.team.id, platform="telegram", identifier="42")
        s.add_all([channel, participant])
        await s.flush()
        chat = ChatSession(team_id=world.team.id, chatbot_id=world.chatbot.id, channel_id=channel.id,
                           participant_id=participant.id, platform="telegram")  # fmt: skip
        s.add(chat)
        await s.commit()
    ids: list[int] = []

    async def make(**values: Any) -> int:
        async with db() as s:
            delivery = Delivery(team_id=world.team.id, session_id=chat.id, channel_id=channel.id,
                                platform="telegram", recipient="42", message_text="hi", **values)  # fmt: skip
            s.add(delivery)
            await s.commit()
            ids.append(delivery.id)
            return delivery.id

    make.ids = ids  # type: ignore[attr-defined]
    return make


# Workers claim across teams: a test takes every due delivery (other tests' too, all of them
# finished with) and looks only at its own.
ALL = 100_000


async def claim(app, limit: int = ALL, now=None):  # type: ignore[no-untyped-def]
    return await outbox.claim_due_deliveries(app.state.runtime.store, now=now or utcnow(), limit=limit,
                                             lease_seconds=LEASE)  # fmt: skip


def mine(claimed, ids) -> list[int]:  # type: ignore[no-untyped-def]
    return [d.id for d in claimed if d.id in ids]


async def row(db, delivery_id: int) -> Delivery:  # type: ignore[no-untyped-def]
    async with db() as s:
        return await s.scalar(select(Delivery).where(Delivery.id == delivery_id))


async def test_a_due_delivery_is_claimed_once_under_a_lease(app, db, make_delivery):
    due = await make_delivery()
    later = await make_delivery(next_attempt_at=utcnow() + timedelta(minutes=5))
    claimed = await claim(app)
    assert mine(claimed, [due, later]) == [due]
    (delivery,) = [d for d in claimed if d.id == due]
    assert (delivery.attempts, delivery.recipient, delivery.message_text) == (1, "42", "hi")
    stored = await row(db, due)
    assert stored.status == DeliveryStatus.sending and stored.lease_until > utcnow()
    assert mine(await claim(app), [due, later]) == []  # leased: nobody else takes it
    # A worker that died mid-send: once its lease ends the delivery is claimed again.
    again = await claim(app, now=utcnow() + timedelta(seconds=LEASE + 1))
    assert mine(again, [due]) == [due] and [d.attempts for d in again if d.id == due] == [2]


async def test_concurrent_workers_take_disjoint_batches(app, db, make_delivery):
    await claim(app)  # nothing else due: the batches below are about these 30
    ids = [await make_delivery() for _ in range(30)]
    batches = await asyncio.gather(*(claim(app, limit=4) for _ in range(10)))
    taken = [i for batch in batches for i in mine(batch, ids)]
    assert len(taken) == len(set(taken))  # no delivery in two batches
    assert sorted(taken) == sorted(ids)  # and, between them, every due one


async def test_sent_records_the_providers_id(app, db, make_delivery):
    delivery_id = await make_delivery()
    (delivery,) = [d for d in await claim(app) if d.id == delivery_id]
    now = utcnow()
    await outbox.record_sent(app.state.runtime.store, delivery.id, "tg-981", now)
    stored = await row(db, delivery_id)
    assert (stored.status, stored.provider_message_id, stored.sent_at, stored.lease_until) == (
        DeliveryStatus.sent, "tg-981", now, None)  # fmt: skip


async def test_a_transient_failure_comes_back_later_and_honours_retry_after(app, db, make_delivery):
    delivery_id = await make_delivery()
    (delivery,) = [d for d in await claim(app) if d.id == delivery_id]
    now = utcnow()
    failure = SendFailed("429: slow down", permanent=False, retry_after=600)
    status = await outbox.record_failure(app.state.runtime.store, delivery, failure, now, max_attempts=6,
                                         backoff_seconds=30, rng=RNG)  # fmt: skip
    stored = await row(db, delivery_id)
    assert status == stored.status == DeliveryStatus.pending
    assert stored.last_error == "429: slow down" and stored.lease_until is None
    assert stored.next_attempt_at == now + timedelta(seconds=600)
    assert mine(await claim(app, now=now + timedelta(seconds=599)), [delivery_id]) == []
    assert mine(await claim(app, now=now + timedelta(seconds=601)), [delivery_id]) == [delivery_id]


async def test_a_permanent_failure_or_the_last_attempt_fails_at_once(app, db, make_delivery):
    permanent, exhausted = await make_delivery(), await make_delivery(attempts=5)
    claimed = {d.id: d for d in await claim(app)}
    now = utcnow()
    kwargs = {"max_attempts": 6, "backoff_seconds": 30, "rng": RNG}
    bad = SendFailed("400: chat not found", permanent=True)
    busy = SendFailed("503: busy", permanent=False)
    assert await outbox.record_failure(app.state.runtime.store, claimed[permanent], bad, now, **kwargs) == "failed"
    assert await outbox.record_failure(app.state.runtime.store, claimed[exhausted], busy, now, **kwargs) == "failed"
    assert (await row(db, permanent)).last_error == "400: chat not found"
    assert (await row(db, exhausted)).attempts == 6


async def test_an_outcome_is_not_recorded_over_another_workers_claim(app, db, make_delivery):
    """A worker whose lease expired (it was slow) and whose delivery another worker then sent
    must not overwrite the outcome."""
    delivery_id = await make_delivery()
    (slow,) = [d for d in await claim(app) if d.id == delivery_id]
    later = utcnow() + timedelta(seconds=LEASE + 1)
    (fast,) = [d for d in await claim(app, now=later) if d.id == delivery_id]
    await outbox.record_sent(app.state.runtime.store, fast.id, "second", later)
    await outbox.record_failure(app.state.runtime.store, slow, SendFailed("x", permanent=True), later,
                                max_attempts=6, backoff_seconds=30, rng=RNG)  # fmt: skip
    stored = await row(db, delivery_id)
    assert (stored.status, stored.provider_message_id) == (DeliveryStatus.sent, "second")


async def test_released_claims_are_due_again_without_counting_an_attempt(app, db, make_delivery):
    delivery_id = await make_delivery()
    assert mine(await claim(app), [delivery_id]) == [delivery_id]
    await outbox.release_claim(app.state.runtime.store, delivery_id, utcnow())
    stored = await row(db, delivery_id)
    assert (stored.status, stored.attempts, stored.lease_until) == (DeliveryStatus.pending, 0, None)
    assert mine(await claim(app), [delivery_id]) == [delivery_id]


def test_six_attempts_with_the_default_backoff_span_about_a_quarter_of_an_hour():
    rng = random.Random(1)
    waits = [outbox.retry_delay(attempt, 29.0, None, rng) for attempt in range(1, 6)]
    assert all(a < b for a, b in zip(waits, waits[1:]))  # growing
    assert 600 < sum(waits) < 1300
    assert outbox.retry_delay(1, 29.0, 120.0, rng) == 120.0  # the provider asked for longer
