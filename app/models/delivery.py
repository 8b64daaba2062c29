"""The durable outbox of bot-initiated messages (SPEC §6)."""

import enum
import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import utcnow
from app.models.base import Base, new_uuid
from app.models.conversation import BigId


class DeliveryStatus(enum.StrEnum):
    pending = "pending"  # waiting for its (next) attempt, at next_attempt_at
    sending = "sending"  # claimed by a worker until lease_until
    sent = "sent"
    failed = "failed"  # a permanent error, or every attempt used
    skipped = "skipped"  # not sent on purpose (channel disabled, consent withdrawn): see last_error


class Delivery(Base):
    """One bot-initiated message to one participant: created with its trigger in one
    transaction, claimed by a worker under a lease (a crashed worker's claim expires), retried
    with backoff. Its AI message is stored once, before the first send (``message_id``)."""

    __tablename__ = "delivery"
    __table_args__ = (
        Index("ix_delivery_due", "status", "next_attempt_at"),
        # A trigger's Idempotency-Key lives on its delivery, written in the same transaction: a
        # repeat finds the first trigger's delivery (and answers as it did), never a second one.
        Index("uq_delivery_idempotency", "idempotency_credential", "idempotency_key", unique=True),
        # The expiry purge (app/stores/idempotency.py) finds keyed deliveries by age; only the
        # rows still holding a key are indexed.
        Index(
            "ix_delivery_idempotency_created_at", "created_at",
            postgresql_where=text("idempotency_key IS NOT NULL"),
            sqlite_where=text("idempotency_key IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    public_id: Mapped[uuid.UUID] = mapped_column(unique=True, default=new_uuid)
    team_id: Mapped[int] = mapped_column(ForeignKey("team.id", ondelete="CASCADE"), index=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("chat_session.id", ondelete="CASCADE"))
    channel_id: Mapped[int] = mapped_column(ForeignKey("channel.id", ondelete="CASCADE"))
    message_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("chat_message.id", ondelete="SET NULL")
    )
    platform: Mapped[str] = mapped_column(String(30))
    recipient: Mapped[str] = mapped_column(String(320))
    # Exactly one: an instruction for the model (never stored as a message) or the text itself.
    prompt_text: Mapped[str | None] = mapped_column(Text)
    message_text: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default=DeliveryStatus.pending)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    provider_message_id: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    idempotency_credential: Mapped[str | None] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
