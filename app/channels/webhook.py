"""The ``api`` platform's sender: a signed webhook to the team's ``callback_url`` (SPEC §6).

The body is JSON ``{type, delivery_id, session_id, chatbot, participant, message, created_at}``
signed per Standard Webhooks (https://www.standardwebhooks.com/) with the channel's
``signing_secret``, so receivers can use any Standard Webhooks library to check it:

* ``webhook-id``: the delivery id, the same on every retry, so a receiver de-duplicates a message
  it already took (the worker may resend once after a crash, SPEC §6);
* ``webhook-timestamp``: when this attempt was signed (unix seconds; receivers reject old ones,
  which bounds replays);
* ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``.

The bytes signed are exactly the bytes sent (serialised once, never re-encoded by the client).
The target is checked against the SSRF guard before every attempt (``webhook_target``), and
redirects are not followed, so an answer cannot send the request anywhere the guard did not see.
"""

import base64
import json
import secrets
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks import Webhook

from app.channels.base import (
    OutboundMessage,
    SendContext,
    SendFailed,
    SendResult,
    failure_from_response,
    post,
)
from app.channels.webhook_target import UnsafeWebhookTarget, check_webhook_target

SECRET_PREFIX = "whsec_"


def new_signing_secret() -> str:
    """A fresh secret for an ``api`` channel created without one: ``whsec_`` + base64 of 32
    random bytes (the Standard Webhooks format; the spec asks for 24 to 64)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def _utc_iso(moment: datetime) -> str:
    # Stored timestamps are naive UTC; say so explicitly on the wire.
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.isoformat().replace("+00:00", "Z")


class WebhookSender:
    platform = "api"

    async def send(
        self, context: SendContext, message: OutboundMessage, config: dict[str, Any]
    ) -> SendResult:
        url = config.get("callback_url")
        secret = config.get("signing_secret")
        if not url or not secret:
            raise SendFailed("api channel has no callback_url or signing_secret", permanent=True)
        try:
            await check_webhook_target(url, context.settings.webhook_allow_private)
        except UnsafeWebhookTarget as exc:
            raise SendFailed(str(exc), permanent=True) from None
        try:
            signer = Webhook(secret)
        except Exception:  # bad base64 or empty: the library raises several kinds
            raise SendFailed("api channel's signing_secret is not a valid whsec_ secret", permanent=True) from None

        body = json.dumps(
            {
                "type": "message",
                "delivery_id": message.delivery_id,
                "session_id": message.session_id,
                "chatbot": message.chatbot_id,
                "participant": message.participant_id,
                "message": message.text,
                "created_at": _utc_iso(message.created_at),
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )
        now = datetime.now(UTC).replace(microsecond=0)
        headers = {
            "Content-Type": "application/json",
            "webhook-id": message.delivery_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signer.sign(message.delivery_id, now, body),
        }
        try:  # never a redirect: its target would not have passed the guard
            response = await post(
                context, url, content=body.encode("utf-8"), headers=headers, follow_redirects=False
            )
        except httpx.InvalidURL as exc:
            raise SendFailed(f"callback_url is not a valid URL: {exc}", permanent=True) from exc
        if not response.is_success:
            raise failure_from_response(response)
        return SendResult(provider_message_id=response.headers.get("x-message-id") or None)
