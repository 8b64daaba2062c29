"""What every platform sender takes and gives back (SPEC §6).

A sender delivers one bot message to one participant on one platform and says how it went:
``SendResult`` when the provider accepted it, else ``SendFailed`` with what the delivery worker
needs to decide: retry later (transient: network, 408, 429, 5xx; ``retry_after`` when the
provider said how long), fail at once with the provider's own error text (permanent: other 4xx),
or mark the participant's consent withdrawn (e.g. Telegram's 403 "bot was blocked by the user").

Senders know nothing of the database: the worker hands them the message, the participant's
identifier and the channel's config with its secrets decrypted. All HTTP goes through the one
shared ``httpx.AsyncClient`` in ``SendContext``; provider base URLs come from ``Settings`` so
tests point them at loopback fakes.
"""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import httpx

from app.config import Settings


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    delivery_id: str  # stable across retries: providers' idempotency keys, webhook-id
    session_id: str  # the session's external id
    chatbot_id: str  # the chatbot's public id
    participant_id: str  # the participant's public id
    recipient: str  # the participant's identifier on the platform (chat id, E.164 number, email)
    text: str
    created_at: datetime
    # The session's state (``email_subject`` for email, ``page_context``) as the sender may use.
    session_state: dict[str, Any] = field(default_factory=dict)
    # When the participant last wrote to the bot on this platform (WhatsApp's 24-hour window).
    last_inbound_at: datetime | None = None
    # The participant's system metadata for this chatbot: consent, platform ids, Connect's key.
    participant_metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SendResult:
    provider_message_id: str | None = None


class SendFailed(Exception):
    """The provider did not take the message. ``permanent``: do not retry (the provider's error
    is in ``reason``); else retry, after ``retry_after`` seconds if the provider said so."""

    def __init__(
        self,
        reason: str,
        *,
        permanent: bool,
        retry_after: float | None = None,
        consent_withdrawn: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.retry_after = retry_after
        self.consent_withdrawn = consent_withdrawn


@dataclass(frozen=True)
class SendContext:
    http: httpx.AsyncClient
    settings: Settings


class Sender(Protocol):
    async def send(
        self, context: SendContext, message: OutboundMessage, config: dict[str, Any]
    ) -> SendResult: ...


TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def failure_from_response(response: httpx.Response, reason: str | None = None) -> SendFailed:
    """Classify a provider's non-2xx answer: transient (retry, honouring ``Retry-After`` in
    seconds) or permanent (its own error text recorded)."""
    text = reason or f"{response.status_code}: {response.text[:500]}"
    transient = response.status_code in TRANSIENT_STATUSES or response.status_code >= 500
    retry_after = retry_after_seconds(response.headers.get("retry-after"))
    return SendFailed(text, permanent=not transient, retry_after=retry_after)


async def post(context: SendContext, url: str, **kwargs: Any) -> httpx.Response:
    """A request to a provider, within the send timeout; network trouble is a transient failure."""
    kwargs.setdefault("timeout", context.settings.send_timeout_seconds)
    try:
        return await context.http.post(url, **kwargs)
    except httpx.TransportError as exc:
        raise failure_from_transport(exc) from exc


def response_json(response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object, or {} when it is not one (a proxy's HTML error page)."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def required_config(config: dict[str, Any], key: str) -> str:
    """A channel config value the send needs; missing, it is a permanent failure (no retry
    would find it)."""
    value = config.get(key)
    if not value:
        raise SendFailed(f"channel config is missing {key!r}", permanent=True)
    return str(value)


def failure_from_transport(exc: httpx.TransportError) -> SendFailed:
    """Connection refused, reset, timed out: always worth another try."""
    return SendFailed(f"{type(exc).__name__}: {exc}", permanent=False)


def retry_after_seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: the worker's own backoff applies
