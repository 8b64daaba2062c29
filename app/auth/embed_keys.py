"""Embed keys (SPEC §4.6): an ``embedded_widget`` channel's ``widget_token``, presented as
``X-Embed-Key`` by a web page.

The token stays in the channel's config, encrypted, so the operator can be shown it again; its
SHA-256 is ``Channel.embed_key_hash`` (unique), so a presented key is found by one indexed
lookup. Whoever sets or changes a token sets the hash with it (``set_widget_token``).
"""

import re
import secrets
import sqlalchemy as sa

from app.crypto import Keys, decrypt, sha256_hex
from app.errors import DomainError
from app.models.base import JSONType

WIDGET_TOKEN = "widget_token"
# A widget token is public (it sits in web pages) but must be unguessable: 24 random bytes are
# 32 URL-safe characters. One given by the operator must be as long, in the same alphabet.
WIDGET_TOKEN_BYTES = 24
_GIVEN_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,128}")


def new_widget_token() -> str:
    return secrets.token_urlsafe(WIDGET_TOKEN_BYTES)


def is_acceptable_widget_token(token: str) -> bool:
    return _GIVEN_TOKEN.fullmatch(token) is not None


def embed_key_hash(token: str) -> str:
    return sha256_hex(token)


# The channel table as this module needs it, written out (not the model) so the 0006 migration
# can use it on the schema of its own time.
_channel = sa.table(
    "channel",
    sa.column("id", sa.Integer),
    sa.column("platform", sa.String),
    sa.column("config", JSONType),
    sa.column("deleted", sa.Boolean),
    sa.column("embed_key_hash", sa.String),
)


class UnreadableWidgetToken(DomainError):
    """A domain error so that ``chatbots db upgrade`` says it plainly (no traceback)."""

    status_code = 500


def fill_embed_key_hashes(connection: sa.Connection, keys: Keys | None) -> int:
    """Hash the token of every live widget channel that has none yet (channels made before the
    hash column). Returns how many were filled.

    ``keys``: the current secret key and its fallbacks (``Settings.encryption_keys``). A token
    that cannot be decrypted (no key, or none that opens it) stops everything with an error that
    says so: a widget left without its hash would silently refuse every visitor. Deleted
    channels and widgets without a token are skipped (they have no key).
    """
    rows = connection.execute(
        sa.select(_channel.c.id, _channel.c.config).where(
            _channel.c.platform == "embedded_widget",
            _channel.c.deleted.is_(False),
            _channel.c.embed_key_hash.is_(None),
        )
    ).all()
    updates = []
    for channel_id, config in rows:
        stored = config.get(WIDGET_TOKEN) if isinstance(config, dict) else None
        if not isinstance(stored, str) or not stored:
            continue
        if keys is None:
            raise UnreadableWidgetToken(
                f"Channel {channel_id} is an embedded widget whose token must be hashed: set "
                "CHATBOTS_SECRET_KEY (the key its config was encrypted with) and migrate again."
            )
        try:
            token = decrypt(stored, keys)
        except ValueError as exc:
            raise UnreadableWidgetToken(f"Channel {channel_id}: {exc}") from None
        updates.append({"channel_id": channel_id, "hash": embed_key_hash(token)})
    if updates:
        connection.execute(
            sa.update(_channel)
            .where(_channel.c.id == sa.bindparam("channel_id"))
            .values(embed_key_hash=sa.bindparam("hash")),
            updates,
        )
    return len(updates)

