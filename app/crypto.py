"""Encryption of secrets at rest and hashing of presented secrets.

Provider keys and channel tokens are encrypted with Fernet. Credentials the service issues (API
keys) are only stored as hashes.

Keys. Every function that encrypts or decrypts takes ``keys``: one secret, or a sequence whose
first item is the current ``CHATBOTS_SECRET_KEY`` and whose others are
``CHATBOTS_SECRET_KEY_FALLBACKS`` (``Settings.encryption_keys``). New values are always encrypted
under the current key; a stored value is read with whichever key opens it (Fernet's
``MultiFernet`` tries them in order), so an operator can change the key without downtime and
then re-encrypt (``chatbots secrets rotate``) before dropping the old one.

Derivation. A secret becomes a Fernet key through HKDF-SHA256 (RFC 5869) with the fixed
``HKDF_INFO`` (it binds the output to this one use: any other key derived from the same secret
one day gets another ``info``) and the fixed, public ``HKDF_SALT``. The salt is not random
per deployment on purpose: every process (API, worker, CLI, migrations) must derive the same key
from the environment alone, and a salt kept in the database would make the database's own
contents a precondition of reading it. HKDF extracts and expands; it does not slow down a
guesser, so the secret must be random (``secrets.token_urlsafe(48)``), not a password.

Releases before HKDF derived the key as ``sha256(b"chatbots-api/encryption/" + secret)``. Values
written then are still read (``legacy_fernet_key``, tried after every HKDF key) and never
written; ``chatbots secrets rotate`` re-encrypts them under the HKDF key.
"""

import base64
import hashlib
import hmac
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ENCRYPTED_PREFIX = "enc:"
# Config keys whose values are secrets, in provider and channel configs.
SECRET_KEY_MARKERS = ("key", "token", "secret", "password")

HKDF_INFO = b"chatbots-api field encryption v1"
HKDF_SALT = b"chatbots-api"
_LEGACY_PREFIX = b"chatbots-api/encryption/"

# One secret, or the current key followed by the fallbacks.
Keys = str | Sequence[str]

UNREADABLE = (
    "cannot decrypt a stored secret: neither CHATBOTS_SECRET_KEY nor any of "
    "CHATBOTS_SECRET_KEY_FALLBACKS opens it (was the key it was written under removed?)"
)


def derive_fernet_key(secret_key: str) -> bytes:
    """The Fernet key (urlsafe base64 of 32 bytes) that ``secret_key`` stands for."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=HKDF_SALT, info=HKDF_INFO)
    return base64.urlsafe_b64encode(hkdf.derive(secret_key.encode()))


def legacy_fernet_key(secret_key: str) -> bytes:
    """The derivation before HKDF: read, never written (see the module's docstring)."""
    return base64.urlsafe_b64encode(hashlib.sha256(_LEGACY_PREFIX + secret_key.encode()).digest())


def key_tuple(keys: Keys) -> tuple[str, ...]:
    ordered = (keys,) if isinstance(keys, str) else tuple(keys)
    if not ordered:
        raise ValueError("no encryption key given")
    return ordered


@lru_cache
def _writer(secret_key: str) -> Fernet:
    return Fernet(derive_fernet_key(secret_key))


@lru_cache
def _reader(keys: tuple[str, ...]) -> MultiFernet:
    # Every HKDF key before any legacy one: a value written by this release is found at the
    # first try under the current key, and a wrong key costs one HMAC, not a decryption.
    return MultiFernet(
        [_writer(k) for k in keys] + [Fernet(legacy_fernet_key(k)) for k in keys]
    )


def encrypt(value: str, keys: Keys) -> str:
    return ENCRYPTED_PREFIX + _writer(key_tuple(keys)[0]).encrypt(value.encode()).decode()


def decrypt(value: str, keys: Keys) -> str:
    if not value.startswith(ENCRYPTED_PREFIX):
        return value
    try:
        return _reader(key_tuple(keys)).decrypt(_token(value)).decode()
    except InvalidToken:
        raise ValueError(UNREADABLE) from None


def reencrypt(value: str, keys: Keys) -> str | None:
    """``value`` encrypted under the current key, or None if it already is (or is not encrypted
    at all). Raises ValueError when no key opens it."""
    if not value.startswith(ENCRYPTED_PREFIX):
        return None
    ordered = key_tuple(keys)
    try:
        _writer(ordered[0]).decrypt(_token(value))
        return None
    except InvalidToken:
        return encrypt(decrypt(value, ordered), ordered)


def _token(value: str) -> bytes:
    return value[len(ENCRYPTED_PREFIX) :].encode()


def is_secret_field(name: str) -> bool:
    lowered = name.lower()
    return any(marker in lowered for marker in SECRET_KEY_MARKERS)


def encrypt_config(config: dict[str, Any], keys: Keys) -> dict[str, Any]:
    """Encrypt the secret-looking string values of a provider or channel config."""
    return {
        k: encrypt(v, keys) if isinstance(v, str) and v and is_secret_field(k) else v
        for k, v in config.items()
    }


def decrypt_config(config: dict[str, Any], keys: Keys) -> dict[str, Any]:
    ordered = key_tuple(keys)
    return {k: _decrypt_cached(v, ordered) if isinstance(v, str) else v for k, v in config.items()}


@lru_cache(maxsize=1024)
def _decrypt_cached(value: str, keys: tuple[str, ...]) -> str:
    # A provider's key is decrypted on every turn; the ciphertext names its plaintext exactly.
    # The whole key list is part of the cache key: a list without the key that opened a value
    # never finds it here (a process's keys only change at a restart anyway).
    return decrypt(value, keys)


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
