"""Twilio's Messages API, shared by WhatsApp-over-Twilio and Facebook Messenger (SPEC §6): the
request is the same; only the addressing differs (``whatsapp:+27...``, ``messenger:<id>``)."""

from typing import Any

from app.channels.base import (
    SendContext,
    SendResult,
    failure_from_response,
    post,
    required_config,
    response_json,
)

# Twilio refuses a Body longer than this.
TWILIO_MAX_CHARS = 1600


async def send_via_twilio(
    context: SendContext, config: dict[str, Any], *, sender: str, recipient: str, text: str
) -> SendResult:
    """Send ``text`` through Twilio's Messages API in 1,600-character chunks, in order.

    ``sender``/``recipient`` carry the channel prefix (``whatsapp:+27...``, ``messenger:<id>``).
    A chunk that fails stops the rest; a retry of the delivery then resends the chunks already
    accepted (Twilio has no idempotency key to prevent it): a long message is delivered at
    least once, not exactly once.
    """
    account_sid = required_config(config, "account_sid")
    auth = (account_sid, required_config(config, "auth_token"))
    url = f"{context.settings.twilio_api_base}/2010-04-01/Accounts/{account_sid}/Messages.json"
    last_sid = None
    for chunk in _chunks(text, TWILIO_MAX_CHARS):
        response = await post(
            context, url, auth=auth, data={"From": sender, "To": recipient, "Body": chunk}
        )
        if not response.is_success:
            error = response_json(response)
            reason = None
            if "message" in error:
                reason = f"{response.status_code}: Twilio {error.get('code')}: {error['message']}"
            raise failure_from_response(response, reason)
        last_sid = response_json(response).get("sid")
    return SendResult(last_sid)


def _chunks(text: str, size: int) -> list[str]:
    # An empty text is still one (empty) message, so the provider says what it thinks of it.
    return [text[start : start + size] for start in range(0, max(len(text), 1), size)]
