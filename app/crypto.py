"""Encryption of secrets at rest and hashing of presented secrets.

Provider keys and channel tokens are encrypted with Fernet under a key derived from
``CHATBOTS_SECRET_KEY``. Credentials the service issues (API keys) are only stored as hashes.
"""

import base64
import hashlib
import hmac
from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

ENCRYPTED_PREFIX = "enc:"
# Config keys whose values are secrets, in provider and channel configs.
SECRET_KEY_MARKERS = ("key", "token", "secret", "password")


@lru_cache
def _fernet(secret_key: str) -> Fernet:
    derived = hashlib.sha256(b"chatbots-api/encryption/" + secret_key.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(derived))


def encrypt(value: str, secret_key: str) -> str:
    return ENCRYPTED_PREFIX + _fernet(secret_key).encrypt(value.encode()).decode()


def decrypt(value: str, secret_key: str) -> str:
    if not value.startswith(ENCRYPTED_PREFIX):
        return value
    try:
        return _fernet(secret_key).decrypt(value[len(ENCRYPTED_PREFIX) :].encode()).decode()
    except InvalidToken as exc:
        raise ValueError("cannot decrypt a stored secret: was CHATBOTS_SECRET_KEY changed?") from exc


def is_secret_field(name: str) -> bool:
    lowered = name.lower()
    return any(marker in lowered for marker in SECRET_KEY_MARKERS)


def encrypt_config(config: dict[str, Any], secret_key: str) -> dict[str, Any]:
    """Encrypt the secret-looking string values of a provider or channel config."""
    return {
        k: encrypt(v, secret_key) if isinstance(v, str) and v and is_secret_field(k) else v
        for k, v in config.items()
    }


def decrypt_config(config: dict[str, Any], secret_key: str) -> dict[str, Any]:
    return {k: _decrypt_cached(v, secret_key) if isinstance(v, str) else v for k, v in config.items()}


@lru_cache(maxsize=1024)
def _decrypt_cached(value: str, secret_key: str) -> str:
    # A provider's key is decrypted on every turn; the ciphertext names its plaintext exactly.
    return decrypt(value, secret_key)


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
