"""Facebook Messenger sender (SPEC §6), through Twilio's Messenger channel.

Twilio addresses Messenger as ``messenger:<page id>`` / ``messenger:<page-scoped user id>``; the
request is otherwise WhatsApp-over-Twilio's: one function, ``app.channels.twilio``.
"""

from typing import Any

from app.channels.base import OutboundMessage, SendContext, SendResult, required_config
from app.channels.twilio import send_via_twilio


class FacebookSender:
    async def send(
        self, context: SendContext, message: OutboundMessage, config: dict[str, Any]
    ) -> SendResult:
        page_id = required_config(config, "page_id")
        return await send_via_twilio(
            context,
            config,
            sender=f"messenger:{page_id}",
            recipient=f"messenger:{message.recipient}",
            text=message.text,
        )
