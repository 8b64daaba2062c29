"""Which sender delivers on which platform (SPEC §6)."""

from typing import Any

from app.channels.base import OutboundMessage, SendContext, Sender, SendResult
from app.channels.commcare_connect import CommCareConnectSender
from app.channels.email import EmailSender
from app.channels.facebook import FacebookSender
from app.channels.slack import SlackSender
from app.channels.sureadhere import SureAdhereSender
from app.channels.telegram import TelegramSender
from app.channels.webhook import WebhookSender
from app.channels.whatsapp import WhatsAppSender
from app.models import Platform


class StoredForWidget:
    """``embedded_widget``: nothing to push to. The message is in the session (stored before
    the send), where the widget fetches it; the delivery is done."""

    async def send(self, context: SendContext, message: OutboundMessage, config: dict[str, Any]) -> SendResult:
        return SendResult(provider_message_id=None)


def default_senders() -> dict[str, Sender]:
    """One instance per platform for a worker (a sender may keep state, e.g. a cached token)."""
    return {
        Platform.telegram: TelegramSender(),
        Platform.whatsapp: WhatsAppSender(),
        Platform.facebook: FacebookSender(),
        Platform.slack: SlackSender(),
        Platform.email: EmailSender(),
        Platform.api: WebhookSender(),
        Platform.embedded_widget: StoredForWidget(),
        Platform.sureadhere: SureAdhereSender(),
        Platform.commcare_connect: CommCareConnectSender(),
    }
