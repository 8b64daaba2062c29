"""Chatbots (the seed's "experiments") with their versions, LLM providers and channels."""

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint, false, text, true
from sqlalchemy.orm import Mapped, mapped_column

from app.db import utcnow
from app.models.base import Base, new_uuid


class HistoryMode(enum.StrEnum):
    max_history_length = "max_history_length"
    truncate_tokens = "truncate_tokens"
    summarize = "summarize"


class Platform(enum.StrEnum):
    telegram = "telegram"
    whatsapp = "whatsapp"
    facebook = "facebook"
    sureadhere = "sureadhere"
    slack = "slack"
    commcare_connect = "commcare_connect"
    email = "email"
    api = "api"
    web = "web"
    embedded_widget = "embedded_widget"
    evaluations = "evaluations"


class LlmProvider(Base):
    """A team's LLM account. ``config`` holds ``api_base`` etc.; ``api_key`` is encrypted."""

    __tablename__ = "llm_provider"
    __table_args__ = (UniqueConstraint("team_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("team.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(50))
    name: Mapped[str] = mapped_column(String(200))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Chatbot(Base):
    """One row per version. The editable head has ``working_version_id`` NULL and its
    ``version_number`` is the next number to publish; published versions point at the head."""

    __tablename__ = "chatbot"
    __table_args__ = (
        UniqueConstraint("working_version_id", "version_number"),
        # At most one published version per chatbot.
        Index(
            "uq_chatbot_one_published",
            "working_version_id",
            unique=True,
            postgresql_where=text("is_published"),
            sqlite_where=text("is_published"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[uuid.UUID] = mapped_column(unique=True, default=new_uuid)
    team_id: Mapped[int] = mapped_column(ForeignKey("team.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    working_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("chatbot.id", ondelete="CASCADE")
    )
    version_number: Mapped[int] = mapped_column(default=1)
    is_published: Mapped[bool] = mapped_column(default=False, server_default=false())
    is_archived: Mapped[bool] = mapped_column(default=False, server_default=false())
    version_description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    # Bot config (SPEC §5.1); copied as a whole when a version is published.
    llm_provider_id: Mapped[int | None] = mapped_column(
        ForeignKey("llm_provider.id", ondelete="SET NULL")
    )
    llm_model: Mapped[str] = mapped_column(String(200))
    temperature: Mapped[float] = mapped_column(default=0.7)
    max_tokens: Mapped[int | None]
    system_prompt: Mapped[str] = mapped_column(Text, default="")
    history_mode: Mapped[str] = mapped_column(String(30), default=HistoryMode.max_history_length)
    max_history_length: Mapped[int] = mapped_column(default=30)
    token_limit: Mapped[int] = mapped_column(default=8192)
    source_material: Mapped[str] = mapped_column(Text, default="")
    participant_allowlist: Mapped[list[Any]] = mapped_column(default=list)
    consent_text: Mapped[str | None] = mapped_column(Text)
    confirmation_text: Mapped[str | None] = mapped_column(Text)
    seed_message: Mapped[str | None] = mapped_column(Text)

    BOT_CONFIG_FIELDS = (
        "llm_provider_id", "llm_model", "temperature", "max_tokens", "system_prompt",
        "history_mode", "max_history_length", "token_limit", "source_material",
        "participant_allowlist", "consent_text", "confirmation_text", "seed_message",
    )  # fmt: skip

    @property
    def is_working_version(self) -> bool:
        return self.working_version_id is None



class Channel(Base):
    """Connects a chatbot (its head) to a platform. The team's API channel has no chatbot."""

    __tablename__ = "channel"
    __table_args__ = (
        Index(
            "uq_channel_chatbot_platform",
            "chatbot_id",
            "platform",
            unique=True,
            postgresql_where=text("NOT deleted"),
            sqlite_where=text("NOT deleted"),
        ),
        Index(
            "uq_channel_team_api",
            "team_id",
            unique=True,
            postgresql_where=text("chatbot_id IS NULL AND platform = 'api' AND NOT deleted"),
            sqlite_where=text("chatbot_id IS NULL AND platform = 'api' AND NOT deleted"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("team.id", ondelete="CASCADE"), index=True)
    chatbot_id: Mapped[int | None] = mapped_column(ForeignKey("chatbot.id", ondelete="CASCADE"))
    platform: Mapped[str] = mapped_column(String(30))
    name: Mapped[str] = mapped_column(String(200), default="")
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    external_id: Mapped[uuid.UUID] = mapped_column(unique=True, default=new_uuid)
    enabled: Mapped[bool] = mapped_column(default=True, server_default=true())
    disabled_message: Mapped[str | None] = mapped_column(Text)
    deleted: Mapped[bool] = mapped_column(default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # An embedded_widget channel's widget_token (its X-Embed-Key), SHA-256 hex: found by one
    # indexed lookup; the token itself stays in the encrypted config, to show the operator.
    embed_key_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
