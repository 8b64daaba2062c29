"""Participants, their data, sessions and messages."""

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint, false, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import utcnow
from app.models.base import Base, new_uuid

# SQLite only auto-increments an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class SessionStatus(enum.StrEnum):
    setup = "setup"
    pending = "pending"
    active = "active"
    pending_review = "pending-review"
    complete = "complete"


class MessageRole(enum.StrEnum):
    human = "human"
    ai = "ai"
    system = "system"


class Participant(Base):
    __tablename__ = "participant"
    __table_args__ = (UniqueConstraint("team_id", "platform", "identifier"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("team.id", ondelete="CASCADE"))
    platform: Mapped[str] = mapped_column(String(30))
    identifier: Mapped[str] = mapped_column(String(320))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id", ondelete="SET NULL"))
    name: Mapped[str] = mapped_column(String(200), default="")
    public_id: Mapped[uuid.UUID] = mapped_column(unique=True, default=new_uuid)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ParticipantData(Base):
    """A participant's data for one chatbot (its head), shared by all its versions."""

    __tablename__ = "participant_data"
    __table_args__ = (UniqueConstraint("participant_id", "chatbot_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participant.id", ondelete="CASCADE"))
    chatbot_id: Mapped[int] = mapped_column(ForeignKey("chatbot.id", ondelete="CASCADE"))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    system_metadata: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ChatSession(Base):
    """One conversation (SPEC "Session"). ``external_id`` is the public session id."""

    __tablename__ = "chat_session"
    __table_args__ = (
        # At most one open session per participant, chatbot and channel: two concurrent first
        # messages cannot create two sessions.
        Index(
            "uq_chat_session_open",
            "chatbot_id",
            "channel_id",
            "participant_id",
            unique=True,
            postgresql_where=text("ended_at IS NULL"),
            sqlite_where=text("ended_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    external_id: Mapped[str] = mapped_column(String(36), unique=True, default=lambda: str(uuid.uuid4()))
    team_id: Mapped[int] = mapped_column(ForeignKey("team.id", ondelete="CASCADE"), index=True)
    chatbot_id: Mapped[int] = mapped_column(ForeignKey("chatbot.id", ondelete="CASCADE"))
    channel_id: Mapped[int] = mapped_column(ForeignKey("channel.id", ondelete="CASCADE"))
    participant_id: Mapped[int] = mapped_column(
        ForeignKey("participant.id", ondelete="CASCADE"), index=True
    )
    platform: Mapped[str] = mapped_column(String(30))
    status: Mapped[str] = mapped_column(String(20), default=SessionStatus.setup)
    state: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_activity_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]
    versions_seen: Mapped[list[Any]] = mapped_column(default=list)
    # A turn in progress holds this lease (messages of a session are processed one at a time).
    lease_until: Mapped[datetime | None]
    # history_mode "summarize": a summary of every message up to and including summary_until_id.
    summary: Mapped[str | None] = mapped_column(Text)
    summary_until_id: Mapped[int | None] = mapped_column(BigId)

    @property
    def is_ended(self) -> bool:
        return self.ended_at is not None


class ChatMessage(Base):
    __tablename__ = "chat_message"
    __table_args__ = (Index("ix_chat_message_session_created", "session_id", "created_at", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("chat_session.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(10))
    content: Mapped[str] = mapped_column(Text)
    message_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    version_label: Mapped[str | None] = mapped_column(String(30))
    # Kept in the record, never shown to the model (the consent exchange). A column, not a
    # metadata key, so the bounded history query can skip these rows in SQL.
    hidden: Mapped[bool] = mapped_column(default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SessionWaiter(Base):
    """A turn waiting for a session that another turn holds: a ticket. Across processes the
    lowest live ticket of a session claims it next, so its turns are taken in arrival order
    (SPEC §3.2); a ticket older than the lease time (its process died) no longer counts."""

    __tablename__ = "session_waiter"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    session_id: Mapped[int] = mapped_column(
        ForeignKey("chat_session.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IdempotencyRecord(Base):
    """The first response to a request carrying an ``Idempotency-Key`` (SPEC §3.2)."""

    __tablename__ = "idempotency_record"
    # created_at: the expiry purge deletes by age (app/stores/idempotency.py).
    __table_args__ = (UniqueConstraint("credential", "key"), Index("ix_idempotency_record_created_at", "created_at"))

    id: Mapped[int] = mapped_column(primary_key=True)
    credential: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    response: Mapped[dict[str, Any] | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
