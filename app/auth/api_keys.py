"""API keys (SPEC §4.2): ``<prefix>.<secret>``, stored as prefix + SHA-256 of the whole key.

The secret has 256 bits of entropy, so a fast hash is enough (no password stretching needed);
lookups go by the indexed prefix and the hash is compared in constant time.
"""

import secrets
import string
from dataclasses import dataclass

from app.crypto import constant_time_equal, sha256_hex

PREFIX_LENGTH = 8
_PREFIX_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True)
class GeneratedKey:
    key: str
    prefix: str
    key_hash: str


def generate_api_key() -> GeneratedKey:
    prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(PREFIX_LENGTH))
    key = f"{prefix}.{secrets.token_urlsafe(32)}"  # 43 characters of secret
    return GeneratedKey(key=key, prefix=prefix, key_hash=sha256_hex(key))


def split_prefix(raw_key: str) -> str | None:
    """The prefix of a presented key, or None if it is not shaped like one of ours."""
    prefix, dot, secret = raw_key.partition(".")
    if not dot or len(prefix) != PREFIX_LENGTH or len(secret) < 32:
        return None
    return prefix


def key_matches(raw_key: str, stored_hash: str) -> bool:
    return constant_time_equal(sha256_hex(raw_key), stored_hash)
