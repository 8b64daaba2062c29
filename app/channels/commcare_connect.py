"""CommCare Connect: an end-to-end encrypted message through Connect's messaging API (SPEC §6).

Connect (its PersonalID server) relays messages between a messaging server, this service, and the
CommCare app on the participant's phone; it never sees the text. Each participant has a Connect
channel with this service and a key shared with their phone only: the text is sealed with
AES-GCM under that key and posted to ``/messaging/send_fcm/`` as ``{"channel", "message_id",
"content": {"ciphertext", "tag", "nonce"}}`` (base64 each), authenticated with this deployment's
messaging-server credentials (HTTP Basic, ``CHATBOTS_COMMCARE_CONNECT_CLIENT_ID``/``_SECRET``).

The channel id, the key and the consent are per participant: they come from the participant's
system metadata (``OutboundMessage.participant_metadata``: ``consent``,
``commcare_connect_channel_id``, ``commcare_connect_encryption_key``, the key base64 as Open Chat
Studio stores it). Without consent nothing is sent (consent withdrawn); without a channel id or
key nothing can be, and a retry would not change that (permanent).

``message_id`` is derived from the delivery id, so every attempt of one delivery carries the same
id: Connect refuses a second message with an id it already has (``MESSAGE_ID_ALREADY_EXISTS``),
which means an earlier attempt did arrive (its answer was lost), so that answer counts as sent.
"""

import base64
import binascii
import os
import uuid
from typing import Any

import httpx
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.channels.base import (
    OutboundMessage,
    SendContext,
    SendFailed,
    SendResult,
    failure_from_response,
    post,
    response_json,
)

SEND_PATH = "/messaging/send_fcm/"
NONCE_BYTES = 12  # GCM's standard nonce, as Connect's own reference sender uses
TAG_BYTES = 16
AES_KEY_BYTES = frozenset({16, 24, 32})
# A delivery id that is not itself a UUID (Connect's message_id is one) is mapped into this
# namespace, so the same delivery always gets the same message id.
MESSAGE_ID_NAMESPACE = uuid.UUID("5d0c2f6e-8a4b-4c1e-9f3a-2b7d6e1c0a94")

NO_USER_CONSENT = "NO_USER_CONSENT"
MESSAGE_ID_ALREADY_EXISTS = "MESSAGE_ID_ALREADY_EXISTS"


class CommCareConnectSender:
    async def send(
        self, context: SendContext, message: OutboundMessage, config: dict[str, Any]
    ) -> SendResult:
        auth = _server_credentials(context)
        metadata = message.participant_metadata
        if metadata.get("consent") is not True:
            raise SendFailed(
                "participant has not consented to CommCare Connect messages",
                permanent=True,
                consent_withdrawn=True,
            )
        channel_id = metadata.get("commcare_connect_channel_id")
        if not channel_id:
            raise SendFailed(
                "participant has no commcare_connect_channel_id (no Connect channel yet)",
                permanent=True,
            )
        key = _encryption_key(metadata.get("commcare_connect_encryption_key"))
        message_id = connect_message_id(message.delivery_id)
        response = await post(
            context,
            context.settings.commcare_connect_server_url.rstrip("/") + SEND_PATH,
            auth=auth,
            json={
                "channel": str(channel_id),
                "message_id": message_id,
                "content": encrypt(key, message.text),
            },
        )
        if response.is_success:
            return SendResult(str(response_json(response).get("message_id") or message_id))
        error = _error_code(response)
        if error == MESSAGE_ID_ALREADY_EXISTS:
            return SendResult(message_id)  # an earlier attempt arrived; its answer was lost
        if error == NO_USER_CONSENT:
            raise SendFailed(
                f"{response.status_code}: {NO_USER_CONSENT}", permanent=True, consent_withdrawn=True
            )
        raise failure_from_response(response)


def connect_message_id(delivery_id: str) -> str:
    """The delivery id when it is a UUID, else a UUID derived from it: stable across attempts."""
    try:
        return str(uuid.UUID(delivery_id))
    except ValueError:
        return str(uuid.uuid5(MESSAGE_ID_NAMESPACE, delivery_id))


def encrypt(key: bytes, text: str) -> dict[str, str]:
    """``text`` sealed with AES-GCM under ``key`` and a fresh random nonce, as Connect carries it:
    ciphertext, tag and nonce apart, each base64."""
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, text.encode("utf-8"), None)
    return {
        "ciphertext": base64.b64encode(sealed[:-TAG_BYTES]).decode(),
        "tag": base64.b64encode(sealed[-TAG_BYTES:]).decode(),
        "nonce": base64.b64encode(nonce).decode(),
    }


def _server_credentials(context: SendContext) -> tuple[str, str]:
    settings = context.settings
    if not (settings.commcare_connect_client_id and settings.commcare_connect_client_secret):
        raise SendFailed(
            "CommCare Connect is not configured: set CHATBOTS_COMMCARE_CONNECT_CLIENT_ID and "
            "CHATBOTS_COMMCARE_CONNECT_CLIENT_SECRET",
            permanent=True,
        )
    return settings.commcare_connect_client_id, settings.commcare_connect_client_secret


def _encryption_key(value: Any) -> bytes:
    if not value:
        raise SendFailed("participant has no commcare_connect_encryption_key", permanent=True)
    try:
        key = base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) not in AES_KEY_BYTES:
        # The key itself stays out of the reason: last_error is shown to API callers.
        raise SendFailed(
            "participant's commcare_connect_encryption_key is not a base64 AES key",
            permanent=True,
        )
    return key


def _error_code(response: httpx.Response) -> str | None:
    """Connect's ``{"errors": "<CODE>"}``, upper-cased (older servers sent lower case)."""
    errors = response_json(response).get("errors")
    return errors.upper() if isinstance(errors, str) else None
