"""Email: one plain-text message over SMTP (SPEC §6).

The ``Message-ID`` comes from the delivery id, so a retry after a lost acknowledgement resends the
same message id and mail clients can show it once. SMTP's own reply codes classify failures:
4xx means "try again later" (greylisting, a full queue), 5xx means the server will never take it.
"""

from email.message import EmailMessage
from typing import Any

import aiosmtplib

from app.channels.base import OutboundMessage, SendContext, SendFailed, SendResult

DEFAULT_SUBJECT = "New message"


class EmailSender:
    async def send(
        self, context: SendContext, message: OutboundMessage, config: dict[str, Any]
    ) -> SendResult:
        settings = context.settings
        email = EmailMessage()
        email["From"] = config["from_address"]
        email["To"] = message.recipient
        email["Subject"] = message.session_state.get("email_subject") or DEFAULT_SUBJECT
        message_id = f"<{message.delivery_id}@chatbots>"
        email["Message-ID"] = message_id
        email.set_content(message.text)
        try:
            await aiosmtplib.send(
                email,
                hostname=settings.smtp_host,
                port=settings.smtp_port,
                username=settings.smtp_username,
                password=settings.smtp_password,
                use_tls=settings.smtp_tls == "tls",
                # False, not aiosmtplib's default None (STARTTLS whenever offered): "none" must
                # mean none, and "starttls" must fail rather than fall back to plain text.
                start_tls=settings.smtp_tls == "starttls",
                timeout=settings.send_timeout_seconds,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            # One recipient, so one refusal: classify it by its own code.
            raise _failure(exc.recipients[0]) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise _failure(exc) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:  # refused, reset, timed out
            raise SendFailed(f"{type(exc).__name__}: {exc}", permanent=False) from exc
        return SendResult(provider_message_id=message_id)


def _failure(exc: aiosmtplib.SMTPResponseException) -> SendFailed:
    return SendFailed(f"{exc.code} {exc.message}", permanent=500 <= exc.code < 600)
