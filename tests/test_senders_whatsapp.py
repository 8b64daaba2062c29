"""WhatsApp (Meta Cloud API, Twilio, Turn.io) and Facebook-via-Twilio senders against a loopback
fake of the providers' HTTP APIs, and the E.164 normalisation trigger_bot uses (SPEC §6)."""

import base64
import json
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from aiohttp import web

from app.channels.base import OutboundMessage, SendContext, SendFailed
from app.channels.facebook import FacebookSender
from app.channels.phone import InvalidPhoneNumber, to_e164
from app.channels.whatsapp import WhatsAppSender
from app.config import Settings

RECIPIENT = "+27821234567"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes

    @property
    def form(self) -> dict[str, str]:
        fields = parse_qs(self.raw.decode(), strict_parsing=True)
        return {key: values[0] for key, values in fields.items()}

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


@dataclass
class Answer:
    status: int = 200
    body: Any = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


class FakeProvider:
    """Records every request and answers with the queued answers in order (the last repeats)."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.answers: list[Answer] = [Answer()]
        self.url = ""  # set once listening

    def reply(self, *answers: Answer) -> None:
        self.answers = list(answers)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(
            Recorded(request.method, request.path, dict(request.headers), await request.read())
        )
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return web.json_response(answer.body, status=answer.status, headers=answer.headers)


@pytest.fixture
async def fake():  # type: ignore[no-untyped-def]
    provider = FakeProvider()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", provider.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    provider.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield provider
    await runner.cleanup()


def _context_for(base: str) -> SendContext:
    settings = Settings(
        _env_file=None, meta_api_base=base, twilio_api_base=base, turnio_api_base=base
    )
    return SendContext(http=httpx.AsyncClient(timeout=5), settings=settings)


@pytest.fixture
async def context(fake: FakeProvider):  # type: ignore[no-untyped-def]
    context = _context_for(fake.url)
    yield context
    await context.http.aclose()


def _message(
    text: str = "Time for your check-in",
    last_inbound_at: datetime | None = None,
    recipient: str = RECIPIENT,
) -> OutboundMessage:
    return OutboundMessage(
        delivery_id="dlv_1",
        session_id="ses_1",
        chatbot_id="bot_1",
        participant_id="par_1",
        recipient=recipient,
        text=text,
        created_at=datetime.now(UTC),
        last_inbound_at=last_inbound_at,
    )


META = {
    "provider": "meta_cloud_api",
    "phone_number_id": "1098765",
    "access_token": "meta-token",
    "template_name": "checkin_reminder",
    "template_language": "en_US",
}
TWILIO = {"provider": "twilio", "account_sid": "AC123", "auth_token": "twilio-secret", "number": "+14155550100"}
TURNIO = {"provider": "turnio", "auth_token": "turn-token"}
FACEBOOK = {"page_id": "4242", "account_sid": "AC123", "auth_token": "twilio-secret"}
TWILIO_BASIC = "Basic " + base64.b64encode(b"AC123:twilio-secret").decode()


# --- E.164 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    ["+27821234567", "27821234567", "+27 82 123 4567", "+27-82-123-4567", " +27 (82) 123 4567 "],
)
def test_valid_numbers_in_any_layout_become_e164(raw: str) -> None:
    assert to_e164(raw) == "+27821234567"


def test_numbers_of_other_countries_become_e164() -> None:
    assert to_e164("+1 (415) 555-2671") == "+14155552671"
    assert to_e164("442079460958") == "+442079460958"


@pytest.mark.parametrize(
    "raw",
    [
        "abc",  # letters
        "+27 82 123 456a",  # letters phonenumbers would silently drop
        "1-800-FLOWERS",  # a vanity number is not a WhatsApp identifier
        "123",  # too short
        "+1 555 0100",  # possible length, not a valid number
        "+27 12",  # too short for the country
        "",
    ],
)
def test_what_is_not_a_valid_number_is_refused(raw: str) -> None:
    with pytest.raises(InvalidPhoneNumber) as caught:
        to_e164(raw)
    assert isinstance(caught.value, ValueError) and repr(raw) in str(caught.value)


# --- Meta Cloud API -------------------------------------------------------------------------


async def test_meta_sends_text_inside_the_24_hour_window(fake: FakeProvider, context: SendContext) -> None:
    fake.reply(Answer(body={"messages": [{"id": "wamid.1"}]}))
    result = await WhatsAppSender().send(
        context, _message(last_inbound_at=datetime.now(UTC) - timedelta(hours=23)), META
    )
    assert result.provider_message_id == "wamid.1"
    [request] = fake.requests
    assert (request.method, request.path) == ("POST", "/v21.0/1098765/messages")
    assert request.headers["Authorization"] == "Bearer meta-token"
    assert request.json == {
        "messaging_product": "whatsapp",
        "to": "27821234567",
        "type": "text",
        "text": {"body": "Time for your check-in"},
    }


@pytest.mark.parametrize(
    "last_inbound_at",
    [datetime.now(UTC) - timedelta(hours=25), None],
    ids=["window-closed", "never-wrote"],
)
async def test_meta_sends_the_template_outside_the_window(
    fake: FakeProvider, context: SendContext, last_inbound_at: datetime | None
) -> None:
    fake.reply(Answer(body={"messages": [{"id": "wamid.2"}]}))
    result = await WhatsAppSender().send(context, _message(last_inbound_at=last_inbound_at), META)
    assert result.provider_message_id == "wamid.2"
    [request] = fake.requests
    assert request.path == "/v21.0/1098765/messages"
    assert request.json == {
        "messaging_product": "whatsapp",
        "to": "27821234567",
        "type": "template",
        "template": {
            "name": "checkin_reminder",
            "language": {"code": "en_US"},
            "components": [
                {"type": "body", "parameters": [{"type": "text", "text": "Time for your check-in"}]}
            ],
        },
    }


async def test_meta_naive_utc_timestamps_count_as_utc_for_the_window(fake: FakeProvider, context: SendContext) -> None:
    naive_recent = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1)
    await WhatsAppSender().send(context, _message(last_inbound_at=naive_recent), META)
    assert fake.requests[0].json["type"] == "text"


async def test_meta_429_is_transient_with_retry_after(fake: FakeProvider, context: SendContext) -> None:
    fake.reply(Answer(429, {"error": {"message": "Too many requests", "code": 4}}, {"Retry-After": "30"}))
    with pytest.raises(SendFailed) as caught:
        await WhatsAppSender().send(context, _message(), META)
    assert not caught.value.permanent and caught.value.retry_after == 30.0


@pytest.mark.parametrize("code", [130429, 131048, 131056])
async def test_meta_rate_limit_codes_are_transient_even_on_400(fake: FakeProvider, context: SendContext, code: int) -> None:
    fake.reply(Answer(400, {"error": {"message": "Rate limit hit", "code": code}}))
    with pytest.raises(SendFailed) as caught:
        await WhatsAppSender().send(context, _message(), META)
    assert not caught.value.permanent and "Rate limit hit" in caught.value.reason


async def test_meta_other_400_is_permanent_with_metas_message(fake: FakeProvider, context: SendContext) -> None:
    fake.reply(Answer(400, {"error": {"message": "Template name does not exist in the translation", "code": 132001}}))
    with pytest.raises(SendFailed) as caught:
        await WhatsAppSender().send(context, _message(), META)
    assert caught.value.permanent
    assert "Template name does not exist in the translation" in caught.value.reason


async def test_meta_500_is_transient(fake: FakeProvider, context: SendContext) -> None:
    fake.reply(Answer(500, {"error": {"message": "An unknown error occurred", "code": 1}}))
    with pytest.raises(SendFailed) as caught:
        await WhatsAppSender().send(context, _message(), META)
    assert not caught.value.permanent


async def test_meta_without_a_template_outside_the_window_fails_permanently_unsent(fake: FakeProvider, context: SendContext) -> None:
    config = {key: value for key, value in META.items() if key != "template_name"}
    with pytest.raises(SendFailed) as caught:
        await WhatsAppSender().send(context, _message(), config)
    assert caught.value.permanent and "template_name" in caught.value.reason
    assert fake.requests == []


# --- Twilio ---------------------------------------------------------------------------------


async def test_twilio_request_is_exact(fake: FakeProvider, context: SendContext) -> None:
    fake.reply(Answer(201, {"sid": "SM1"}))
    result = await WhatsAppSender().send(context, _message(), TWILIO)
    assert result.provider_message_id == "SM1"
    [request] = fake.requests
    assert (request.method, request.path) == ("POST", "/2010-04-01/Accounts/AC123/Messages.json")
    assert request.headers["Authorization"] == TWILIO_BASIC
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.form == {
        "From": "whatsapp:+14155550100",
        "To": "whatsapp:+27821234567",
        "Body": "Time for your check-in",
    }


async def test_twilio_splits_long_text_into_1600_char_chunks_in_order(fake: FakeProvider, context: SendContext) -> None:
    text = "a" * 1600 + "b" * 1600 + "c" * 300
    fake.reply(Answer(201, {"sid": "SM1"}), Answer(201, {"sid": "SM2"}), Answer(201, {"sid": "SM3"}))
    result = await WhatsAppSender().send(context, _message(text), TWILIO)
    assert [request.form["Body"] for request in fake.requests] == ["a" * 1600, "b" * 1600, "c" * 300]
    assert result.provider_message_id == "SM3"  # the last chunk's


async def test_twilio_429_is_transient_with_retry_after(fake: FakeProvider, context: SendContext) -> None:
    fake.reply(Answer(429, {"code": 20429, "message": "Too Many Requests"}, {"Retry-After": "12"}))
    with pytest.raises(SendFailed) as caught:
        await WhatsAppSender().send(context, _message(), TWILIO)
    assert not caught.value.permanent and caught.value.retry_after == 12.0


async def test_twilio_400_is_permanent_with_twilios_message(fake: FakeProvider, context: SendContext) -> None:
    fake.reply(Answer(400, {"code": 63007, "message": "Twilio could not find a Channel with the specified From address"}))
    with pytest.raises(SendFailed) as caught:
        await WhatsAppSender().send(context, _message(), TWILIO)
    assert caught.value.permanent
    assert "Twilio could not find a Channel with the specified From address" in caught.value.reason


async def test_twilio_500_is_transient(fake: FakeProvider, context: SendContext) -> None:
    fake.reply(Answer(500, {"code": 20500, "message": "Internal Server Error"}))
    with pytest.raises(SendFailed) as caught:
        await WhatsAppSender().send(context, _message(), TWILIO)
    assert not caught.value.permanent


async def test_twilio_failing_chunk_stops_the_rest(fake: FakeProvider, context: SendContext) -> None:
    fake.reply(Answer(201, {"sid": "SM1"}), Answer(503, {"code": 20503, "message": "Unavailable"}))
    with pytest.raises(SendFailed) as caught:
        await WhatsAppSender().send(context, _message("x" * 4000), TWILIO)
    assert not caught.value.permanent and len(fake.requests) == 2


async def test_connection_refused_is_transient() -> None:
    with socket.socket() as probe:  # a port nothing listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = _context_for(f"http://127.0.0.1:{port}")
    try:
        for config in (META, TWILIO, TURNIO):
            with pytest.raises(SendFailed) as caught:
                await WhatsAppSender().send(context, _message(), config)
            assert not caught.value.permanent
    finally:
        await context.http.aclose()


# --- Turn.io and dispatch -------------------------------------------------------------------


async def test_turnio_request_is_exact(fake: FakeProvider, context: SendContext) -> None:
    fake.reply(Answer(200, {"messages": [{"id": "turn-1"}]}))
    result = await WhatsAppSender().send(context, _message(), TURNIO)
    assert result.provider_message_id == "turn-1"
    [request] = fake.requests
    assert (request.method, request.path) == ("POST", "/v1/messages")
    assert request.headers["Authorization"] == "Bearer turn-token"
    assert request.json == {"to": "27821234567", "type": "text", "text": {"body": "Time for your check-in"}}


async def test_turnio_400_is_permanent_with_its_error(fake: FakeProvider, context: SendContext) -> None:
    fake.reply(Answer(400, {"errors": [{"title": "Recipient is not a valid WhatsApp user"}]}))
    with pytest.raises(SendFailed) as caught:
        await WhatsAppSender().send(context, _message(), TURNIO)
    assert caught.value.permanent and "Recipient is not a valid WhatsApp user" in caught.value.reason


async def test_unknown_provider_fails_permanently_unsent(fake: FakeProvider, context: SendContext) -> None:
    with pytest.raises(SendFailed) as caught:
        await WhatsAppSender().send(context, _message(), {"provider": "carrier_pigeon"})
    assert caught.value.permanent and "unknown WhatsApp provider 'carrier_pigeon'" in caught.value.reason
    assert fake.requests == []


async def test_an_invalid_recipient_fails_permanently_unsent(fake: FakeProvider, context: SendContext) -> None:
    with pytest.raises(SendFailed) as caught:
        await WhatsAppSender().send(context, _message(recipient="not-a-number"), META)
    assert caught.value.permanent and fake.requests == []


# --- Facebook Messenger via Twilio ----------------------------------------------------------


async def test_facebook_uses_twilio_with_messenger_addressing(fake: FakeProvider, context: SendContext) -> None:
    fake.reply(Answer(201, {"sid": "SMfb"}))
    result = await FacebookSender().send(context, _message(recipient="psid-777"), FACEBOOK)
    assert result.provider_message_id == "SMfb"
    [request] = fake.requests
    assert (request.method, request.path) == ("POST", "/2010-04-01/Accounts/AC123/Messages.json")
    assert request.headers["Authorization"] == TWILIO_BASIC
    assert request.form == {"From": "messenger:4242", "To": "messenger:psid-777", "Body": "Time for your check-in"}


async def test_facebook_400_is_permanent_with_twilios_message(fake: FakeProvider, context: SendContext) -> None:
    fake.reply(Answer(400, {"code": 63003, "message": "Channel could not find To address"}))
    with pytest.raises(SendFailed) as caught:
        await FacebookSender().send(context, _message(recipient="psid-777"), FACEBOOK)
    assert caught.value.permanent and "Channel could not find To address" in caught.value.reason
