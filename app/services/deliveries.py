"""Deliveries as people see them (SPEC §6): the status endpoint and the ``chatbots delivery``
commands. The worker's side of the outbox is ``app.channels.outbox``."""

import uuid
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.errors import BadRequest, NotFound
from app.models import ChatSession, Delivery, DeliveryStatus, Team

DELIVERY_NOT_FOUND = "Delivery not found."
STATUS_COLUMNS = (
    Delivery.public_id, Delivery.status, Delivery.platform, ChatSession.external_id,
    Delivery.attempts, Delivery.last_error, Delivery.provider_message_id, Delivery.created_at,
    Delivery.updated_at, Delivery.sent_at,
)  # fmt: skip
FIELDS = ("id", "status", "platform", "session_id", "attempts", "last_error",
          "provider_message_id", "created_at", "updated_at", "sent_at")  # fmt: skip
_WITH_SESSION = select(*STATUS_COLUMNS, Team.slug).join(
    ChatSession, ChatSession.id == Delivery.session_id
).join(Team, Team.id == Delivery.team_id)


def _status(row: Any) -> dict[str, Any]:
    values = dict(zip(FIELDS, row[: len(FIELDS)], strict=True))
    values["id"] = str(values["id"])
    return values


def _parse(public_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(public_id)
    except ValueError:
        raise NotFound(DELIVERY_NOT_FOUND) from None


async def delivery_status(session: AsyncSession, public_id: str, team_id: int | None = None) -> dict[str, Any]:
    """One delivery's status; ``team_id`` scopes it (any other team's, or a malformed id: 404)."""
    statement = _WITH_SESSION.where(Delivery.public_id == _parse(public_id))
    if team_id is not None:
        statement = statement.where(Delivery.team_id == team_id)
    row = (await session.execute(statement)).first()
    if row is None:
        raise NotFound(DELIVERY_NOT_FOUND)
    return _status(row)


async def list_deliveries(
    session: AsyncSession, team_slug: str | None = None, status: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """The newest deliveries first, with their team's slug."""
    if status is not None and status not in DeliveryStatus.__members__:
        choices = ", ".join(DeliveryStatus)
        raise BadRequest(f"Unknown status {status!r}: one of {choices}.")
    statement = _WITH_SESSION.order_by(Delivery.id.desc()).limit(limit)
    if team_slug is not None:
        statement = statement.where(Team.slug == team_slug)
    if status is not None:
        statement = statement.where(Delivery.status == status)
    return [{**_status(row), "team": row.slug} for row in await session.execute(statement)]


async def retry_delivery(session: AsyncSession, public_id: str) -> dict[str, Any]:
    """Send a ``failed`` or ``skipped`` delivery again, now, with a fresh set of attempts (an
    operator fixed the channel, or the participant consented again). The message already
    written is kept: it is not written a second time."""
    now = utcnow()
    result = await session.execute(
        update(Delivery)
        .where(
            Delivery.public_id == _parse(public_id),
            Delivery.status.in_([DeliveryStatus.failed, DeliveryStatus.skipped]),
        )
        .values(status=DeliveryStatus.pending, attempts=0, next_attempt_at=now, updated_at=now,
                last_error=None, lease_until=None)  # fmt: skip
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        current = await delivery_status(session, public_id)  # 404 when there is none
        raise BadRequest(f"Only a failed or skipped delivery can be retried (this one is {current['status']}).")
    await session.commit()
    return await delivery_status(session, public_id)
