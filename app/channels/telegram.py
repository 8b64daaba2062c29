"""Telegram: Bot API ``sendMessage`` (SPEC §6).

Telegram refuses a text longer than 4,096 characters, so a long message goes out as several,
in order. Its error answers are JSON (``{"ok": false, "error_code", "description",
"parameters": {"retry_after"}}``), which say more than the status alone: how long a 429 should
wait, and whether a 403 means the participant blocked the bot (consent withdrawn, not an error
worth retrying or alerting on).
"""

from typing import Any

import httpx

from app.channels.base import (
    OutboundMessage,
    SendContext,
    SendFailed,
    SendResult,
    failure_from_response,
    post,
    response_json,
)

MAX_CHARS = 4096


def split_text(text: str, limit: int = MAX_CHARS) -> list[str]:
    """Cut ``text`` into pieces of at most ``limit`` characters whose concatenation is ``text``.
    Each cut falls just after the last newline in the piece, else the last space, so words and
    lines stay whole; a piece with neither (one very long word) is cut hard."""
    chunks: list[str] = []
    while len(text) > limit:
        window = text[:limit]
        boundary = window.rfind("\n")
        if boundary <= 0:
            boundary = window.rfind(" ")
        cut = boundary + 1 if boundary > 0 else limit
        chunks.append(text[:cut])
        text = text[cut:]
    chunks.append(text)
    return chunks


class TelegramSender:
    async def send(
        self, context: SendContext, message: OutboundMessage, config: dict[str, Any]
    ) -> SendResult:
        url = f"{context.settings.telegram_api_base}/bot{config['bot_token']}/sendMessage"
        message_id: str | None = None
        # A failure part-way leaves the earlier pieces delivered; the retry sends them all again
        # (Telegram has no idempotency key), which the at-least-once guarantee allows.
        for chunk in split_text(message.text):
            response = await post(context, url, json={"chat_id": message.recipient, "text": chunk})
            body = response_json(response)
            if not response.is_success or not body.get("ok"):
                raise _failure(response, body)
            message_id = str(body["result"]["message_id"])
        return SendResult(provider_message_id=message_id)


def _failure(response: httpx.Response, body: dict[str, Any]) -> SendFailed:
    description = body.get("description")
    status = response.status_code
    if status == 403 and description and "blocked" in description.lower():
        return SendFailed(description, permanent=True, consent_withdrawn=True)
    failed = failure_from_response(response, reason=description)
    # Telegram says how long to wait in the body; the header is only a fallback.
    retry_after = (body.get("parameters") or {}).get("retry_after")
    if status == 429 and isinstance(retry_after, int | float):
        failed.retry_after = float(retry_after)
    return failed
