"""Slack: Web API ``chat.postMessage`` (SPEC §6).

Posting to a user id makes Slack open (or reuse) the bot's DM with that user, so the participant's
identifier is the channel. Slack reports most failures as HTTP 200 with ``{"ok": false, "error":
"<code>"}``: the status alone would call them sent, so the body decides.
"""

from typing import Any

from app.channels.base import (
    OutboundMessage,
    SendContext,
    SendFailed,
    SendResult,
    retry_after_seconds,
    failure_from_response,
    post,
)


class SlackSender:
    async def send(
        self, context: SendContext, message: OutboundMessage, config: dict[str, Any]
    ) -> SendResult:
        response = await post(
            context,
            f"{context.settings.slack_api_base}/chat.postMessage",
            headers={"Authorization": f"Bearer {config['bot_token']}"},
            json={"channel": message.recipient, "text": message.text},
        )
        if not response.is_success:  # 429 (with Retry-After), 5xx, or a proxy's answer
            raise failure_from_response(response)
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict) or not body.get("ok"):
            error = (body.get("error") if isinstance(body, dict) else None) or "invalid_response"
            raise SendFailed(
                error,
                permanent=error != "ratelimited",
                retry_after=retry_after_seconds(response.headers.get("retry-after")),
            )
        return SendResult(provider_message_id=body.get("ts"))
