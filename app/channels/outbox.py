"""The delivery outbox (SPEC §6): claiming due deliveries under a lease and recording each
attempt's outcome, on any database through SQLAlchemy Core (the delivery worker's pace, not a
turn's, so one implementation serves both).

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

from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.channels.base import SendFailed
from app.db import one_statement
from app.models import Delivery, DeliveryStatus

D = Delivery.__table__
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
    and_(D.c.status == DeliveryStatus.pending, D.c.next_attempt_at <= bindparam("now")),
    and_(D.c.status == DeliveryStatus.sending, D.c.lease_until < bindparam("now")),
)
_CLAIM = (
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
        lease_until=bindparam("lease_until"),
        attempts=D.c.attempts + 1,
        updated_at=bindparam("now"),
    )
    .returning(
        D.c.id, D.c.public_id, D.c.team_id, D.c.session_id, D.c.channel_id, D.c.message_id,
        D.c.platform, D.c.recipient, D.c.prompt_text, D.c.message_text, D.c.attempts,
    )  # fmt: skip
)


async def claim_due_deliveries(
    engine: AsyncEngine, *, now: datetime, limit: int, lease_seconds: float
) -> list[DueDelivery]:
    """Up to ``limit`` due deliveries (pending and due, or sending with an expired lease),
    oldest first, now ``sending`` under a lease for this worker."""
    params = {"now": now, "limit": limit, "lease_until": now + timedelta(seconds=lease_seconds)}
    async with one_statement(engine) as conn:
        rows = (await conn.execute(_CLAIM, params)).all()
    return sorted((DueDelivery(*row) for row in rows), key=lambda d: d.id)


def _finish(delivery_id: int, **values: Any) -> Any:
    # Only while this worker's claim stands: a worker whose lease expired and whose delivery
    # another worker took must not overwrite that worker's outcome.
    return (
        update(D)
        .where(D.c.id == delivery_id, D.c.status == DeliveryStatus.sending)
        .values(lease_until=None, **values)
    )


async def record_sent(
    engine: AsyncEngine, delivery_id: int, provider_message_id: str | None, now: datetime
) -> None:
    async with one_statement(engine) as conn:
        await conn.execute(_finish(
            delivery_id, status=DeliveryStatus.sent, provider_message_id=provider_message_id,
            sent_at=now, updated_at=now, last_error=None,
        ))  # fmt: skip


async def record_skipped(engine: AsyncEngine, delivery_id: int, reason: str, now: datetime) -> None:
    async with one_statement(engine) as conn:
        await conn.execute(_finish(
            delivery_id, status=DeliveryStatus.skipped, last_error=reason, updated_at=now
        ))  # fmt: skip


def retry_delay(
    attempt: int, backoff_seconds: float, retry_after: float | None, rng: random.Random
) -> float:
    """Exponential backoff (``backoff_seconds`` after the first attempt, doubling) with ±25 %
    jitter, so a provider's outage does not bring every retry back at the same instant; the
    provider's own ``Retry-After`` when it asks for longer."""
    delay = backoff_seconds * 2 ** (attempt - 1) * (0.75 + rng.random() * 0.5)
    return max(delay, retry_after or 0.0)


async def record_failure(
    engine: AsyncEngine,
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
        values: dict[str, Any] = {"status": DeliveryStatus.failed}
    else:
        delay = retry_delay(delivery.attempts, backoff_seconds, failure.retry_after, rng)
        values = {"status": DeliveryStatus.pending, "next_attempt_at": now + timedelta(seconds=delay)}
    async with one_statement(engine) as conn:
        await conn.execute(_finish(delivery.id, last_error=error, updated_at=now, **values))
    return values["status"]


async def extend_lease(engine: AsyncEngine, delivery_id: int, now: datetime, lease_seconds: float) -> None:
    """Keep a claim while its work lasts longer than a lease (a slow model writing the message,
    a slow provider): only a dead worker's claims may expire and be taken again."""
    async with one_statement(engine) as conn:
        await conn.execute(
            update(D)
            .where(D.c.id == delivery_id, D.c.status == DeliveryStatus.sending)
            .values(lease_until=now + timedelta(seconds=lease_seconds))
        )


async def release_claims(engine: AsyncEngine, delivery_ids: list[int], now: datetime) -> None:
    """Give claims back unattempted (a worker stopping before it sent them): due at once, and
    the attempt the claim counted is not counted."""
    if not delivery_ids:
        return
    async with one_statement(engine) as conn:
        await conn.execute(
            update(D)
            .where(D.c.id.in_(delivery_ids), D.c.status == DeliveryStatus.sending)
            .values(status=DeliveryStatus.pending, lease_until=None, next_attempt_at=now,
                    attempts=D.c.attempts - 1, updated_at=now)  # fmt: skip
        )
