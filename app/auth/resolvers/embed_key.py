"""Embed keys (``X-Embed-Key``, SPEC §4.6): a widget channel's public key, good only for chatting
with that channel's chatbot from the pages its ``allowed_domains`` name (``app.auth.origins``).

The key is public (it sits in a web page), so the calling page's origin is what limits it; a
script outside a browser can send any ``Origin``, which is why an embed key can do nothing but
chat anonymously: no user, no trigger_bot, no delivery status (``TeamPrincipal``).
"""

import uuid

from app.auth.embed_keys import embed_key_hash
from app.auth.origins import origin_allowed, parse_origin, request_origin
from app.auth.principal import CredentialContext, Principal
from app.auth.scopes import INTERACT_SCOPE
from app.errors import PermissionDenied
from app.stores.base import TurnStore
from app.stores.widget import EMBED_KEY_CHANNEL, WIDGET_CONFIGS_OF_CHATBOT

ORIGIN_NOT_ALLOWED = "This embed key may not be used from this origin."
EMBED_KEY_SCOPES = frozenset({INTERACT_SCOPE})


async def resolve(store: TurnStore, raw: str, context: CredentialContext) -> Principal | None:
    """The widget channel's principal; None for an unknown key, or one of a deleted channel, of
    another platform or of an archived chatbot. A valid key from a page that its channel does
    not allow (or from no page at all) is a 403."""
    async with store.statements(read_only=True) as db:
        channel = await db.first(EMBED_KEY_CHANNEL, {"p_embed_key_hash": embed_key_hash(raw)})
    if channel is None:
        return None
    if not origin_allowed(request_origin(context.headers), channel["config"].get("allowed_domains")):
        raise PermissionDenied(ORIGIN_NOT_ALLOWED)
    return Principal(
        kind="embed_key",
        credential_id=f"embed_key:{channel['id']}",
        team_id=channel["team_id"],
        scopes=EMBED_KEY_SCOPES,
        channel_id=channel["id"],
        chatbot_ids=frozenset({channel["chatbot_id"]}),
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
