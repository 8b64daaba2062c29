"""The delivery outbox (SPEC §6): claiming due deliveries under a lease and recording each
attempt's outcome: SQLAlchemy Core statements, module constants run through the store
(``TurnStore.statements``: compiled once for asyncpg on PostgreSQL, one round trip each).

A claim is one ``UPDATE ... WHERE id IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)``: on
PostgreSQL any number of workers on any number of machines take disjoint batches without
waiting for each other; on SQLite the write lock makes the same statement atomic. A claimed
delivery is ``sending`` until its lease ends: a worker that dies mid-send leaves it to be
claimed again (the one resend the README's guarantee allows).
"""

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, and_, bindparam, func, or_, select, update

from app.channels.base import SendFailed
from app.models import Delivery, DeliveryStatus
from app.stores.base import TurnStore

D = Delivery.__table__
_TIME = D.c.updated_at.type
NOW = bindparam("now", type_=_TIME)
# A transient failure's error text is kept short: it is for people reading the status.
MAX_ERROR_CHARS = 1000


@dataclass(frozen=True, slots=True)
class DueDelivery:
    id: int
    public_id: Any
    team_id: int
    session_id: int
    channel_id: int
    message_id: int | None
    platform: str
    recipient: str
    prompt_text: str | None
    message_text: str | None
    attempts: int  # including the one just claimed


_DUE = or_(
    and_(D.c.status == DeliveryStatus.pending, D.c.next_attempt_at <= NOW),
    and_(D.c.status == DeliveryStatus.sending, D.c.lease_until < NOW),
)
CLAIM = (
    update(D)
    .where(
        D.c.id.in_(
            select(D.c.id)
            .where(_DUE)
            .order_by(D.c.next_attempt_at, D.c.id)
            .limit(bindparam("limit"))
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
    )
    .values(
        status=DeliveryStatus.sending,
        lease_until=bindparam("lease_until", type_=_TIME),
        attempts=D.c.attempts + 1,
        updated_at=NOW,
    )
    .returning(
        D.c.id, D.c.public_id, D.c.team_id, D.c.session_id, D.c.channel_id, D.c.message_id,
        D.c.platform, D.c.recipient, D.c.prompt_text, D.c.message_text, D.c.attempts,
    )  # fmt: skip
)


async def claim_due_deliveries(
    store: TurnStore, *, now: datetime, limit: int, lease_seconds: float
) -> list[DueDelivery]:
    """Up to ``limit`` due deliveries (pending and due, or sending with an expired lease),
    oldest first, now ``sending`` under a lease for this worker."""
    params = {"now": now, "limit": limit, "lease_until": now + timedelta(seconds=lease_seconds)}
    async with store.statements() as db:
        rows = await db.all(CLAIM, params)
    return sorted((DueDelivery(*row.values()) for row in rows), key=lambda d: d.id)


_DELIVERY = bindparam("delivery_id")
_ERROR = bindparam("error", type_=String)


def _finish(**values: Any) -> Any:
    # Only while this worker's claim stands: a worker whose lease expired and whose delivery
    # another worker took must not overwrite that worker's outcome.
    return (
        update(D)
        .where(D.c.id == _DELIVERY, D.c.status == DeliveryStatus.sending)
        .values(lease_until=None, updated_at=NOW, **values)
    )


RECORD_SENT = _finish(
    status=DeliveryStatus.sent, provider_message_id=bindparam("provider_message_id", type_=String),
    sent_at=NOW, last_error=None,
)  # fmt: skip
RECORD_SKIPPED = _finish(status=DeliveryStatus.skipped, last_error=_ERROR)
RECORD_FAILED = _finish(status=DeliveryStatus.failed, last_error=_ERROR)
RECORD_RETRY = _finish(
    status=DeliveryStatus.pending, last_error=_ERROR,
    next_attempt_at=bindparam("next_attempt_at", type_=_TIME),
)  # fmt: skip
# Given back unattempted (a worker stopping before it sent it): due at once, and the attempt the
# claim counted is not counted.
RELEASE = _finish(status=DeliveryStatus.pending, next_attempt_at=NOW, attempts=D.c.attempts - 1)
EXTEND_LEASE = (
    update(D)
    .where(D.c.id == _DELIVERY, D.c.status == DeliveryStatus.sending)
    .values(lease_until=bindparam("lease_until", type_=_TIME))
)


async def _run(store: TurnStore, statement: Any, **params: Any) -> None:
    async with store.statements() as db:
        await db.execute(statement, params)


async def record_sent(
    store: TurnStore, delivery_id: int, provider_message_id: str | None, now: datetime
) -> None:
    await _run(store, RECORD_SENT, delivery_id=delivery_id, provider_message_id=provider_message_id, now=now)


async def record_skipped(store: TurnStore, delivery_id: int, reason: str, now: datetime) -> None:
    await _run(store, RECORD_SKIPPED, delivery_id=delivery_id, error=reason, now=now)


def retry_delay(
    attempt: int, backoff_seconds: float, retry_after: float | None, rng: random.Random
) -> float:
    """Exponential backoff (``backoff_seconds`` after the first attempt, doubling) with ±25 %
    jitter, so a provider's outage does not bring every retry back at the same instant; the
    provider's own ``Retry-After`` when it asks for longer."""
    delay = backoff_seconds * 2 ** (attempt - 1) * (0.75 + rng.random() * 0.5)
    return max(delay, retry_after or 0.0)


async def record_failure(
    store: TurnStore,
    delivery: DueDelivery,
    failure: SendFailed,
    now: datetime,
    *,
    max_attempts: int,
    backoff_seconds: float,
    rng: random.Random,
) -> str:
    """A permanent failure, or the last attempt's, fails the delivery with the provider's own
    error; a transient one sends it back to ``pending`` for its next attempt. Returns the new
    status."""
    error = failure.reason[:MAX_ERROR_CHARS]
    if failure.permanent or delivery.attempts >= max_attempts:
        await _run(store, RECORD_FAILED, delivery_id=delivery.id, error=error, now=now)
        return DeliveryStatus.failed
    delay = retry_delay(delivery.attempts, backoff_seconds, failure.retry_after, rng)
    await _run(store, RECORD_RETRY, delivery_id=delivery.id, error=error, now=now,
               next_attempt_at=now + timedelta(seconds=delay))  # fmt: skip
    return DeliveryStatus.pending


async def extend_lease(store: TurnStore, delivery_id: int, now: datetime, lease_seconds: float) -> None:
    """Keep a claim while its work lasts longer than a lease (a slow model writing the message,
    a slow provider): only a dead worker's claims may expire and be taken again."""
    await _run(store, EXTEND_LEASE, delivery_id=delivery_id, lease_until=now + timedelta(seconds=lease_seconds))


async def release_claim(store: TurnStore, delivery_id: int, now: datetime) -> None:
    """Give a claim back unattempted: due at once, its attempt not counted."""
    await _run(store, RELEASE, delivery_id=delivery_id, now=now)


# The deliveries not final yet, per state, with the oldest one's creation time: read by
# /metrics at every scrape. ix_delivery_due (status, next_attempt_at) narrows it to the backlog:
# finished deliveries, however many, are not read. (Equalities, not IN: an IN list would be
# expanded at execution, and PostgresStore runs statements compiled once.)
BACKLOG = (
    select(D.c.status, func.count().label("count"), func.min(D.c.created_at).label("oldest"))
    .where(or_(D.c.status == DeliveryStatus.pending, D.c.status == DeliveryStatus.sending))
    .group_by(D.c.status)
)


async def delivery_backlog(store: TurnStore) -> dict[str, tuple[int, datetime]]:
    """``{state: (count, oldest created_at)}`` for the states with deliveries not final yet."""
    async with store.statements(read_only=True) as db:
        rows = await db.all(BACKLOG, {})
    return {row["status"]: (row["count"], row["oldest"]) for row in rows}
