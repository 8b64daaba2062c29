"""Administration of channels: a chatbot's connection to one platform (SPEC §2, §6).

Secrets in channel configs (tokens, keys, passwords) are encrypted at rest; listings mask them.
Functions flush but never commit: the caller owns the transaction.
"""

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.embed_keys import (
    WIDGET_TOKEN,
    embed_key_hash,
    is_acceptable_widget_token,
    new_widget_token,
)
from app.channels.config import InvalidChannelConfig, check_channel_config
from app.channels.webhook import new_signing_secret
from app.channels.webhook_target import UnsafeWebhookTarget, check_webhook_target
from app.config import Settings
from app.errors import BadRequest, NotFound
from app.models import Channel, Chatbot, Platform
from app.services.admin_chatbots import (
    clean_config,
    encrypt_secrets,
    get_chatbot_head,
    mask_config,
)
from app.services.admin_identity import add_unique, for_team, require_text, team_slugs

def _channel_config(platform: Platform, config: Mapping[str, Any] | None) -> dict[str, Any]:
    cleaned = clean_config(config)
    domains = cleaned.get("allowed_domains")
    if isinstance(domains, str):
        cleaned["allowed_domains"] = [d.strip() for d in domains.split(",") if d.strip()]
    if platform == Platform.embedded_widget:
        given = cleaned.get(WIDGET_TOKEN)
        if not given:
            cleaned[WIDGET_TOKEN] = new_widget_token()
        elif not isinstance(given, str) or not is_acceptable_widget_token(given):
            # The embed key is public but must stay unguessable: no short or hand-made tokens.
            raise BadRequest("A widget_token must be 32 to 128 URL-safe characters (A-Z a-z 0-9 - _).")
    if platform == Platform.api and not cleaned.get("signing_secret"):
        cleaned["signing_secret"] = new_signing_secret()  # webhooks are signed (Standard Webhooks)
    return cleaned


async def create_channel(
    session: AsyncSession,
    settings: Settings,
    chatbot_public_id: str | uuid.UUID,
    platform: str,
    name: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> Channel:
    """Connect a chatbot to a platform: at most one non-deleted channel per (chatbot, platform).

    ``allowed_domains`` may be given comma-separated; an embedded_widget channel without a
    ``widget_token`` gets a random one, an api channel without a ``signing_secret`` a new
    ``whsec_`` one. The config must hold what the platform needs to send
    (``app.channels.config``), and an api channel's ``callback_url`` must be a public https
    address (unless ``CHATBOTS_WEBHOOK_ALLOW_PRIVATE``): else a clear error, and nothing is saved.
    """
    try:
        parsed_platform = Platform((platform or "").strip().lower())
    except ValueError:
        choices = ", ".join(p.value for p in Platform)
        raise BadRequest(f"Unknown platform {platform!r}: choose one of {choices}.") from None
    channel_config = _channel_config(parsed_platform, config)
    channel_name = require_text(name, "Channel name", 200) if name and name.strip() else None
    head = await get_chatbot_head(session, chatbot_public_id)
    channel_name = channel_name or f"{head.name} ({parsed_platform.value})"[:200]
    conflict = f"Chatbot {head.public_id} already has a {parsed_platform.value} channel"
    existing = await session.scalar(
        select(Channel.id).where(
            Channel.chatbot_id == head.id,
            Channel.platform == parsed_platform.value,
            Channel.deleted.is_(False),
        )
    )
    if existing is not None:
        raise BadRequest(f"{conflict} (id {existing}).")
    try:
        check_channel_config(parsed_platform, channel_config)
        if parsed_platform == Platform.api:  # checked again at every send: DNS can change
            await check_webhook_target(channel_config["callback_url"], settings.webhook_allow_private)
    except (InvalidChannelConfig, UnsafeWebhookTarget) as exc:
        raise BadRequest(str(exc)) from None
    channel = Channel(
        team_id=head.team_id,
        chatbot_id=head.id,
        platform=parsed_platform.value,
        name=channel_name,
        config=encrypt_secrets(channel_config, settings),
        embed_key_hash=_embed_key_hash_of(channel_config),
    )
    return await add_unique(session, channel, f"{conflict}.")


def _embed_key_hash_of(config: Mapping[str, Any]) -> str | None:
    """The hash under which a widget's embed key is looked up (``app.auth.embed_keys``)."""
    token = config.get(WIDGET_TOKEN)
    return embed_key_hash(token) if isinstance(token, str) and token else None


async def rotate_widget_token(session: AsyncSession, settings: Settings, channel_id: int) -> tuple[Channel, str]:
    """Give a widget channel a new embed key (the old one stops working at once); returns the
    channel and the new key, to be shown once."""
    channel = await _get_channel(session, channel_id)
    if channel.platform != Platform.embedded_widget:
        raise BadRequest(f"Channel {channel_id} is not an embedded_widget channel.")
    token = new_widget_token()
    channel.config = {**channel.config, **encrypt_secrets({WIDGET_TOKEN: token}, settings)}
    channel.embed_key_hash = _embed_key_hash_of({WIDGET_TOKEN: token})
    await session.flush()
    return channel, token


async def _get_channel(session: AsyncSession, channel_id: int) -> Channel:
    if not 1 <= channel_id <= 2**63 - 1:
        raise NotFound(f"No channel with id {channel_id}.")
    channel = await session.scalar(
        select(Channel).where(Channel.id == channel_id, Channel.deleted.is_(False))
    )
    if channel is None:
        raise NotFound(f"No channel with id {channel_id}.")
    return channel


async def set_channel_enabled(
    session: AsyncSession, channel_id: int, enabled: bool, disabled_message: str | None = None
) -> Channel:
    """A disabled channel answers its ``disabled_message`` (or nothing) and sends nothing.

    The message, when given, replaces the stored one; enabling keeps it for the next time.
    """
    channel = await _get_channel(session, channel_id)
    channel.enabled = enabled
    if disabled_message is not None:
        channel.disabled_message = disabled_message
    await session.flush()
    return channel


@dataclass(frozen=True)
class ChannelSummary:
    id: int
    team: str
    chatbot_public_id: uuid.UUID | None  # None: the team's API channel
    chatbot_name: str | None
    platform: str
    name: str
    external_id: uuid.UUID
    enabled: bool
    disabled_message: str | None
    config: dict[str, Any]  # secrets masked


async def list_channels(
    session: AsyncSession, team_slug: str | None = None
) -> list[ChannelSummary]:
    query = (
        select(Channel, Chatbot.public_id, Chatbot.name)
        .outerjoin(Chatbot, Chatbot.id == Channel.chatbot_id)
        .where(Channel.deleted.is_(False))
        .order_by(Channel.team_id, Channel.id)
    )
    query = await for_team(session, query, Channel.team_id, team_slug)
    slugs = await team_slugs(session)
    return [
        ChannelSummary(
            id=channel.id,
            team=slugs[channel.team_id],
            chatbot_public_id=chatbot_public_id,
            chatbot_name=chatbot_name,
            platform=channel.platform,
            name=channel.name,
            external_id=channel.external_id,
            enabled=channel.enabled,
            disabled_message=channel.disabled_message,
            config=mask_config(channel.config),
        )
        for channel, chatbot_public_id, chatbot_name in await session.execute(query)
    ]
