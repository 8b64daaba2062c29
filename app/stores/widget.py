"""Statements for embed keys (SPEC §4.6), run through a store's ``Executor``: module constants,
compiled once for asyncpg on PostgreSQL."""

from sqlalchemy import String, bindparam, select

from app.models import Channel, Chatbot, Platform

_LIVE_WIDGET = (
    Channel.platform == Platform.embedded_widget,
    Channel.deleted.is_(False),
    Chatbot.is_archived.is_(False),
)

# A presented embed key's channel: one lookup on the unique hash index.
EMBED_KEY_CHANNEL = (
    select(Channel.id, Channel.team_id, Channel.chatbot_id, Channel.config)
    .join(Chatbot, Chatbot.id == Channel.chatbot_id)
    .where(Channel.embed_key_hash == bindparam("p_embed_key_hash", type_=String), *_LIVE_WIDGET)
)

# The configs of a chatbot's live widget channels that have an embed key (for a CORS preflight,
# which carries no key: the chatbot is in its path).
WIDGET_CONFIGS_OF_CHATBOT = (
    select(Channel.config)
    .join(Chatbot, Chatbot.id == Channel.chatbot_id)
    .where(
        Chatbot.public_id == bindparam("public_id"),
        Chatbot.working_version_id.is_(None),
        Channel.embed_key_hash.is_not(None),
        *_LIVE_WIDGET,
    )
)
