"""Credentials beyond API keys (SPEC §4.4–§4.6): OAuth clients, codes and tokens, browser
sessions. Every secret is stored as a SHA-256 hex digest (the presented value has 256 bits of
entropy, so a fast hash is enough) under a unique index, so a presented one is found by one
indexed lookup and nothing stored can be replayed."""

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import utcnow
from app.models.base import Base


class OAuthClient(Base):
    """A registered OAuth client. Public clients (a browser app, Swagger UI) have no secret
    and must use PKCE; a team-owned confidential client may also use client credentials,
    acting for its team on ``chatbot_ids`` only."""

    __tablename__ = "oauth_client"

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    client_secret_hash: Mapped[str | None] = mapped_column(String(64))  # None: a public client
    name: Mapped[str] = mapped_column(String(200))
    # The team that owns the client: its consent page offers no team choice, and client
    # credentials act for it. None: any user's team, chosen at consent.
    team_id: Mapped[int | None] = mapped_column(ForeignKey("team.id", ondelete="CASCADE"), index=True)
    redirect_uris: Mapped[list[Any]] = mapped_column(default=list)
    grant_types: Mapped[list[Any]] = mapped_column(default=list)
    scopes: Mapped[list[Any]] = mapped_column(default=list)  # what it may ask for
    chatbot_ids: Mapped[list[Any]] = mapped_column(default=list)  # client credentials: reachable chatbots
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class OAuthAuthorizationCode(Base):
    """A code of 60 s, used once: claimed by one atomic UPDATE (``used_at``), so two
    concurrent redemptions cannot both win; a replay revokes the tokens it issued."""

    __tablename__ = "oauth_authorization_code"

    id: Mapped[int] = mapped_column(primary_key=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("oauth_client.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"), index=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("team.id", ondelete="CASCADE"), index=True)
    redirect_uri: Mapped[str] = mapped_column(Text)
    scope: Mapped[str] = mapped_column(Text)
    code_challenge: Mapped[str] = mapped_column(String(128))
    code_challenge_method: Mapped[str] = mapped_column(String(10))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class OAuthToken(Base):
    """An access token and, for user grants, its refresh token. A refresh rotates: the old row
    is marked ``refreshed_at`` and a new row of the same ``family_id`` is issued; presenting a
    refreshed token again revokes the whole family (access tokens included)."""

    __tablename__ = "oauth_token"

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("oauth_client.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"), index=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("team.id", ondelete="CASCADE"), index=True)
    scope: Mapped[str] = mapped_column(Text)
    access_token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    refresh_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    family_id: Mapped[str] = mapped_column(String(64), index=True)
    authorization_code_id: Mapped[int | None] = mapped_column(
        ForeignKey("oauth_authorization_code.id", ondelete="SET NULL"), index=True
    )
    issued_at: Mapped[datetime] = mapped_column(default=utcnow)
    access_expires_at: Mapped[datetime]
    refresh_expires_at: Mapped[datetime | None]
    refreshed_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class WebSession(Base):
    """A logged-in browser (the ``sessionid`` cookie): server-side, so logout ends it. It acts
    in one of its user's teams, chosen at login (membership is re-checked on every request)."""

    __tablename__ = "web_session"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"), index=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("team.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
