"""``Idempotency-Key`` records expire (``CHATBOTS_IDEMPOTENCY_KEY_SECONDS``, 24 hours by default):
an expired key starts a new request, on incoming_message and on trigger_bot, and the delivery
worker deletes the expired records (``app.stores.idempotency``). On the database under test
(SQLite, or PostgreSQL in ``.ci/run``), through the ASGI app; a key is made old by moving its
first use back in time, as 25 hours of waiting would."""

import uuid
from datetime import timedelta

from sqlalchemy import select, update

from app.db import utcnow
from app.models import Delivery, IdempotencyRecord
from app.services.delivery_worker import DeliveryWorker
from app.stores.idempotency import purge_expired_keys
from tests.factories import unique
from tests.test_trigger_bot import URL, add_channel, body_for

A_DAY_AGO = timedelta(hours=25)


async def age_record(db, key: str) -> None:
    async with db() as s:
        await s.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.key == key)
            .values(created_at=utcnow() - A_DAY_AGO)
        )
        await s.commit()


async def age_delivery(db, delivery_id: str) -> None:
    async with db() as s:
        await s.execute(
            update(Delivery).where(Delivery.public_id == uuid.UUID(delivery_id)).values(created_at=utcnow() - A_DAY_AGO)
        )
        await s.commit()


async def delivery(db, delivery_id: str) -> Delivery:
    async with db() as s:
        return await s.scalar(select(Delivery).where(Delivery.public_id == uuid.UUID(delivery_id)))


def test_keys_expire_after_24_hours_by_default():
    from app.config import Settings

    assert Settings(_env_file=None).idempotency_key_seconds == 24 * 3600


async def test_an_expired_incoming_message_key_may_be_reused_for_another_request(client, db, world):
    key = unique("key")
    headers = {**world.headers, "Idempotency-Key": key}
    first = await client.post(world.url, json={"message": "first"}, headers=headers)
    assert first.status_code == 200, first.text
    # Within its lifetime, another body under the same key is refused.
    refused = await client.post(world.url, json={"message": "second"}, headers=headers)
    assert refused.status_code == 400, refused.text

    await age_record(db, key)
    second = await client.post(world.url, json={"message": "second"}, headers=headers)
    assert second.status_code == 200, second.text
    assert second.json()["response"] == "echo: second"  # a new turn, not the first answer
    again = await client.post(world.url, json={"message": "second"}, headers=headers)
    assert again.json() == second.json()  # and the key now answers for the new request


async def test_an_expired_trigger_key_makes_a_new_delivery_and_frees_the_old_one(client, db, world, settings):
    await add_channel(db, settings, world, "telegram")
    headers = {**world.headers, "Idempotency-Key": unique("trigger")}
    body = body_for(world, identifier="4242")
    first = await client.post(URL, json=body, headers=headers)
    assert first.status_code == 200, first.text
    old_id = first.json()["delivery_id"]
    repeat = await client.post(URL, json=body, headers=headers)
    assert repeat.json()["delivery_id"] == old_id  # still fresh: a replay

    await age_delivery(db, old_id)
    second = await client.post(URL, json=body, headers=headers)
    assert second.status_code == 200, second.text
    new_id = second.json()["delivery_id"]
    assert new_id != old_id
    old = await delivery(db, old_id)
    assert (old.idempotency_key, old.idempotency_credential, old.status) == (None, None, "pending")
    again = await client.post(URL, json=body, headers=headers)
    assert again.json()["delivery_id"] == new_id


async def test_purge_deletes_expired_records_and_frees_expired_delivery_keys(app, client, db, world, settings):
    await add_channel(db, settings, world, "telegram")
    old_key, fresh_key = unique("old"), unique("fresh")
    for key in (old_key, fresh_key):
        r = await client.post(world.url, json={"message": key}, headers={**world.headers, "Idempotency-Key": key})
        assert r.status_code == 200, r.text
    await age_record(db, old_key)
    deliveries = {}
    for key in (old_key, fresh_key):
        r = await client.post(URL, json=body_for(world, identifier=key[-8:]),
                              headers={**world.headers, "Idempotency-Key": key})  # fmt: skip
        assert r.status_code == 200, r.text
        deliveries[key] = r.json()["delivery_id"]
    await age_delivery(db, deliveries[old_key])

    await purge_expired_keys(app.state.runtime.store, utcnow(), settings.idempotency_key_seconds)

    async with db() as s:
        left = set(await s.scalars(select(IdempotencyRecord.key).where(IdempotencyRecord.key.in_([old_key, fresh_key]))))
    assert left == {fresh_key}
    assert (await delivery(db, deliveries[old_key])).idempotency_key is None  # the delivery stays
    assert (await delivery(db, deliveries[fresh_key])).idempotency_key == fresh_key


async def test_the_delivery_worker_purges_once_per_interval(app, client, db, world):
    worker = DeliveryWorker(app.state.runtime, senders={})
    first, second = unique("w1"), unique("w2")
    r = await client.post(world.url, json={"message": "x"}, headers={**world.headers, "Idempotency-Key": first})
    assert r.status_code == 200, r.text
    await age_record(db, first)
    await worker.purge_expired_keys_if_due()  # the worker's first pass purges
    r = await client.post(world.url, json={"message": "y"}, headers={**world.headers, "Idempotency-Key": second})
    assert r.status_code == 200, r.text
    await age_record(db, second)
    await worker.purge_expired_keys_if_due()  # within the interval (an hour): nothing

    async with db() as s:
        left = set(await s.scalars(select(IdempotencyRecord.key).where(IdempotencyRecord.key.in_([first, second]))))
    assert left == {second}
