"""WhatsApp sender (SPEC §6): Meta's Cloud API, Twilio or Turn.io, as the channel's config says.

Also home of the Twilio Messages API call, which Facebook Messenger (app/channels/facebook.py)
shares: the two differ only in the ``whatsapp:`` / ``messenger:`` address prefix.
"""

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from app.channels.base import (
    OutboundMessage,
    SendContext,
    SendFailed,
    SendResult,
    failure_from_response,
    post,
    required_config,
    response_json,
)
from app.channels.phone import InvalidPhoneNumber, to_e164
from app.channels.twilio import send_via_twilio

# Meta lets a business send free-form text only within 24 hours of the user's last message;
# after that only a pre-approved template is delivered.
SERVICE_WINDOW = timedelta(hours=24)
META_API_VERSION = "v21.0"
# Meta's throttling codes, which can come with a 400 rather than a 429: retry, don't fail.
META_RATE_LIMIT_CODES = frozenset({130429, 131048, 131056})


class WhatsAppSender:
    async def send(
        self, context: SendContext, message: OutboundMessage, config: dict[str, Any]
    ) -> SendResult:
        provider = config.get("provider")
        if provider == "meta_cloud_api":
            return await _send_meta(context, message, config)
        if provider == "twilio":
            number = required_config(config, "number")
            return await send_via_twilio(
                context,
                config,
                sender=f"whatsapp:{number}",
                recipient=f"whatsapp:{_e164(message.recipient)}",
                text=message.text,
            )
        if provider == "turnio":
            return await _send_turnio(context, message, config)
        raise SendFailed(f"unknown WhatsApp provider {provider!r}", permanent=True)


async def _send_meta(
    context: SendContext, message: OutboundMessage, config: dict[str, Any]
) -> SendResult:
    phone_number_id = required_config(config, "phone_number_id")
    url = f"{context.settings.meta_api_base}/{META_API_VERSION}/{phone_number_id}/messages"
    headers = {"Authorization": f"Bearer {required_config(config, 'access_token')}"}
    body: dict[str, Any] = {"messaging_product": "whatsapp", "to": _digits(message.recipient)}
    if _in_service_window(message.last_inbound_at):
        body |= {"type": "text", "text": {"body": message.text}}
    else:
        # The template must have one body parameter, which carries the bot's message.
        body |= {
            "type": "template",
            "template": {
                "name": required_config(config, "template_name"),
                "language": {"code": required_config(config, "template_language")},
                "components": [
                    {"type": "body", "parameters": [{"type": "text", "text": message.text}]}
                ],
            },
        }
    response = await post(context, url, headers=headers, json=body)
    if response.is_success:
        return SendResult(_first_message_id(response))
    raise _meta_failure(response)


def _meta_failure(response: httpx.Response) -> SendFailed:
    error = response_json(response).get("error")
    if not isinstance(error, dict):
        return failure_from_response(response)
    reason = f"{response.status_code}: Meta {error.get('code')}: {error.get('message')}"
    failed = failure_from_response(response, reason)
    if error.get("code") in META_RATE_LIMIT_CODES:
        failed.permanent = False
    return failed


async def _send_turnio(
    context: SendContext, message: OutboundMessage, config: dict[str, Any]
) -> SendResult:
    response = await post(
        context,
        f"{context.settings.turnio_api_base}/v1/messages",
        headers={"Authorization": f"Bearer {required_config(config, 'auth_token')}"},
        json={"to": _digits(message.recipient), "type": "text", "text": {"body": message.text}},
    )
    if response.is_success:
        return SendResult(_first_message_id(response))
    raise failure_from_response(response)


def _in_service_window(last_inbound_at: datetime | None) -> bool:
    if last_inbound_at is None:
        return False
    if last_inbound_at.tzinfo is None:  # stored naive in UTC (SQLite)
        last_inbound_at = last_inbound_at.replace(tzinfo=UTC)
    return datetime.now(UTC) - last_inbound_at < SERVICE_WINDOW


def _e164(recipient: str) -> str:
    # trigger_bot stores E.164 already; normalising again keeps identifiers stored before that
    # rule from reaching the provider malformed, and fails them clearly instead.
    try:
        return to_e164(recipient)
    except InvalidPhoneNumber as exc:
        raise SendFailed(str(exc), permanent=True) from exc


def _digits(recipient: str) -> str:
    # Meta and Turn.io address users by their wa_id: the E.164 number without "+".
    return _e164(recipient).removeprefix("+")


def _first_message_id(response: httpx.Response) -> str | None:
    messages = response_json(response).get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[0], dict):
        return messages[0].get("id")
    return None
