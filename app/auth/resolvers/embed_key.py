"""Embed keys (``X-Embed-Key``, SPEC §4.6): a widget channel's public key, good only for chatting
with that channel's chatbot from the pages its ``allowed_domains`` name (``app.auth.origins``).

The key is public (it sits in a web page), so the calling page's origin is what limits it; a
script outside a browser can send any ``Origin``, which is why an embed key can do nothing but
chat anonymously: no user, no trigger_bot, no delivery status (``TeamPrincipal``).
"""

import uuid
from dataclasses import dataclass

from app.auth.embed_keys import embed_key_hash
from app.auth.origins import domain_entries, origin_allowed, parse_origin, request_origin
from app.auth.principal import CredentialContext, Principal
from app.auth.resolvers import remembered
from app.auth.scopes import INTERACT_SCOPE
from app.errors import PermissionDenied
from app.stores.base import TurnStore
from app.stores.widget import EMBED_KEY_CHANNEL, WIDGET_CONFIGS_OF_CHATBOT

ORIGIN_NOT_ALLOWED = "This embed key may not be used from this origin."
EMBED_KEY_SCOPES = frozenset({INTERACT_SCOPE})


@dataclass(frozen=True, slots=True)
class EmbedKeyRecord:
    """What a key's lookup finds (and the credential cache may remember): its live channel."""

    channel_id: int
    team_id: int
    chatbot_id: int
    allowed_domains: tuple[str, ...]


async def resolve(store: TurnStore, raw: str, context: CredentialContext) -> Principal | None:
    """The widget channel's principal; None for an unknown key, or one of a deleted channel, of
    another platform or of an archived chatbot. A valid key from a page that its channel does
    not allow (or from no page at all) is a 403: the origin is checked on every request, also
    when the lookup is remembered (``app.auth.cache``)."""
    hashed = embed_key_hash(raw)

    async def lookup() -> EmbedKeyRecord | None:
        async with store.statements(read_only=True) as db:
            row = await db.first(EMBED_KEY_CHANNEL, {"p_embed_key_hash": hashed})
        if row is None:
            return None
        domains = tuple(domain_entries(row["config"].get("allowed_domains")))
        return EmbedKeyRecord(row["id"], row["team_id"], row["chatbot_id"], domains)

    channel = await remembered(context, ("embed_key", hashed), lookup)
    if channel is None:
        return None
    if not origin_allowed(request_origin(context.headers), channel.allowed_domains):
        raise PermissionDenied(ORIGIN_NOT_ALLOWED)
    return Principal(
        kind="embed_key",
        credential_id=f"embed_key:{channel.channel_id}",
        team_id=channel.team_id,
        scopes=EMBED_KEY_SCOPES,
        channel_id=channel.channel_id,
        chatbot_ids=frozenset({channel.chatbot_id}),
    )


async def widget_allows_origin(store: TurnStore, chatbot_public_id: uuid.UUID, origin: str) -> bool:
    """Whether a page at ``origin`` may call this chatbot with an embed key: the question of a
    CORS preflight, which carries no key. Yes if ANY of the chatbot's live widget channels
    allows it (a chatbot has at most one), so the preflight reveals no more than the POST would."""
    parsed = parse_origin(origin)
    if parsed is None:
        return False
    async with store.statements(read_only=True) as db:
        configs = await db.all(WIDGET_CONFIGS_OF_CHATBOT, {"public_id": chatbot_public_id})
    return any(origin_allowed(parsed, row["config"].get("allowed_domains")) for row in configs)
