"""The Telegram, Slack and email senders (SPEC §6) against real loopback servers: an aiohttp fake
of each provider's HTTP API that records every request and answers what the test tells it, and
an aiosmtpd server that records (or refuses) what it is sent. Nothing of ours is mocked."""

import email
import email.policy
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller

from app.channels.base import OutboundMessage, SendContext, SendFailed, SendResult
from app.channels.email import EmailSender
from app.channels.slack import SlackSender
from app.channels.telegram import TelegramSender, split_text
from app.config import Settings

TELEGRAM_TOKEN = "123456:ABC-def_ghi"
SLACK_TOKEN = "xoxb-test-token"


# --- a fake provider: records each request, answers from a queue (else a default) -----------


@dataclass
class Answer:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeProvider:
    url: str
    default: Callable[[int], Answer]
    requests: list[dict[str, Any]] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)

    def answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        """The next request gets this answer instead of the default."""
        self.answers.append(Answer(status, body, headers or {}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def start_fake(default: Callable[[int], Answer]) -> tuple[FakeProvider, web.AppRunner]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    fake = FakeProvider(url=f"http://127.0.0.1:{sock.getsockname()[1]}", default=default)

    async def handle(request: web.Request) -> web.Response:
        fake.requests.append(
            {
                "method": request.method,
                "path": request.raw_path,
                "headers": dict(request.headers),
                "json": await request.json(),
            }
        )
        answer = fake.answers.pop(0) if fake.answers else fake.default(len(fake.requests))
        return web.json_response(answer.body, status=answer.status, headers=answer.headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return fake, runner


@pytest.fixture
async def telegram() -> AsyncIterator[FakeProvider]:
    fake, runner = await start_fake(
        lambda n: Answer(body={"ok": True, "result": {"message_id": 1000 + n, "chat": {}}})
    )
    yield fake
    await runner.cleanup()


@pytest.fixture
async def slack() -> AsyncIterator[FakeProvider]:
    fake, runner = await start_fake(
        lambda n: Answer(body={"ok": True, "channel": "D024BE91L", "ts": f"1503435956.00{n}"})
    )
    yield fake
    await runner.cleanup()


# --- a real SMTP server --------------------------------------------------------------------


class RecordingHandler:
    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"


class RefusingRecipient:
    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        return "550 5.1.1 <nobody@example.org>: mailbox unavailable"


class DeferringData:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "451 4.7.1 Greylisted, please try again later"


StartSMTP = Callable[[object], int]


@pytest.fixture
def smtp() -> Iterator[StartSMTP]:
    """Start an SMTP server with the given handler; returns its port."""
    controllers: list[Controller] = []

    def start(handler: object) -> int:
        port = free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port)
        controller.start()
        controllers.append(controller)
        return port

    yield start
    for controller in controllers:
        controller.stop()


# --- helpers -------------------------------------------------------------------------------


def outbound(text: str = "Hello there", recipient: str = "424242", **state: Any) -> OutboundMessage:
    return OutboundMessage(
        delivery_id="dlv_0123456789abcdef",
        session_id="sess-1",
        chatbot_id="bot-1",
        participant_id="part-1",
        recipient=recipient,
        text=text,
        created_at=datetime(2026, 12, 1, tzinfo=UTC),
        session_state=state,
    )


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


def context(http: httpx.AsyncClient, **settings: Any) -> SendContext:
    return SendContext(http=http, settings=Settings(_env_file=None, **settings))


async def send_telegram(
    http: httpx.AsyncClient, fake: FakeProvider, text: str = "Hello there"
) -> SendResult:
    return await TelegramSender().send(
        context(http, telegram_api_base=fake.url), outbound(text), {"bot_token": TELEGRAM_TOKEN}
    )


async def send_slack(http: httpx.AsyncClient, base_url: str) -> SendResult:
    return await SlackSender().send(
        context(http, slack_api_base=base_url),
        outbound(recipient="U0123ABCD"),
        {"bot_token": SLACK_TOKEN},
    )


async def send_email(port: int, text: str = "Hello there", **state: Any) -> SendResult:
    async with httpx.AsyncClient(timeout=5) as client:  # unused by email, but part of the context
        ctx = context(client, smtp_host="127.0.0.1", smtp_port=port, send_timeout_seconds=5)
        return await EmailSender().send(
            ctx, outbound(text, recipient="jane@example.org", **state),
            {"from_address": "bot@example.com"},
        )


# --- Telegram ------------------------------------------------------------------------------


async def test_telegram_posts_send_message_with_the_token_in_the_path(
    http: httpx.AsyncClient, telegram: FakeProvider
) -> None:
    result = await send_telegram(http, telegram)

    [request] = telegram.requests
    assert request["method"] == "POST"
    assert request["path"] == f"/bot{TELEGRAM_TOKEN}/sendMessage"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["json"] == {"chat_id": "424242", "text": "Hello there"}
    assert result.provider_message_id == "1001"


async def test_telegram_splits_a_long_text_into_4096_char_messages_in_order(
    http: httpx.AsyncClient, telegram: FakeProvider
) -> None:
    text = "".join(f"word{i:05d} " for i in range(900))  # 9,000 characters, spaces every 10

    result = await send_telegram(http, telegram, text)

    chunks = [request["json"]["text"] for request in telegram.requests]
    assert len(chunks) == 3
    assert "".join(chunks) == text
    assert all(len(chunk) <= 4096 for chunk in chunks)
    # Cut on a space boundary, so no word is split across two messages.
    assert all(chunk.endswith(" ") for chunk in chunks)
    assert result.provider_message_id == "1003"  # the last piece's id


def test_split_prefers_a_newline_then_a_space_else_cuts_hard() -> None:
    lines = "a" * 3000 + "\n" + "b b " * 500  # a newline at 3000, spaces after it
    assert split_text(lines)[0] == "a" * 3000 + "\n"

    spaces = "x" * 4000 + " " + "y" * 500
    assert split_text(spaces) == ["x" * 4000 + " ", "y" * 500]

    one_word = "z" * 9000
    assert split_text(one_word) == ["z" * 4096, "z" * 4096, "z" * 808]

    assert split_text("short") == ["short"]


async def test_telegram_429_is_transient_with_retry_after_from_the_body(
    http: httpx.AsyncClient, telegram: FakeProvider
) -> None:
    telegram.answer(
        429,
        {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 17",
         "parameters": {"retry_after": 17}},
        {"Retry-After": "3"},
    )
    with pytest.raises(SendFailed) as failed:
        await send_telegram(http, telegram)
    assert not failed.value.permanent
    assert failed.value.retry_after == 17.0  # the body's value wins over the header


async def test_telegram_429_without_parameters_uses_the_retry_after_header(
    http: httpx.AsyncClient, telegram: FakeProvider
) -> None:
    telegram.answer(429, {"ok": False, "error_code": 429, "description": "Too Many Requests"},
                    {"Retry-After": "5"})
    with pytest.raises(SendFailed) as failed:
        await send_telegram(http, telegram)
    assert not failed.value.permanent and failed.value.retry_after == 5.0


async def test_telegram_403_blocked_withdraws_consent(
    http: httpx.AsyncClient, telegram: FakeProvider
) -> None:
    telegram.answer(403, {"ok": False, "error_code": 403,
                          "description": "Forbidden: bot was blocked by the user"})
    with pytest.raises(SendFailed) as failed:
        await send_telegram(http, telegram)
    assert failed.value.permanent and failed.value.consent_withdrawn
    assert failed.value.reason == "Forbidden: bot was blocked by the user"


async def test_telegram_other_403_is_permanent_without_withdrawing_consent(
    http: httpx.AsyncClient, telegram: FakeProvider
) -> None:
    telegram.answer(403, {"ok": False, "error_code": 403,
                          "description": "Forbidden: bot can't initiate conversation with a user"})
    with pytest.raises(SendFailed) as failed:
        await send_telegram(http, telegram)
    assert failed.value.permanent and not failed.value.consent_withdrawn


async def test_telegram_400_is_permanent_with_the_description(
    http: httpx.AsyncClient, telegram: FakeProvider
) -> None:
    telegram.answer(
        400, {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}
    )
    with pytest.raises(SendFailed) as failed:
        await send_telegram(http, telegram)
    assert failed.value.permanent and not failed.value.consent_withdrawn
    assert failed.value.reason == "Bad Request: chat not found"


async def test_telegram_500_is_transient(
    http: httpx.AsyncClient, telegram: FakeProvider
) -> None:
    telegram.answer(500, {"ok": False, "error_code": 500, "description": "Internal Server Error"})
    with pytest.raises(SendFailed) as failed:
        await send_telegram(http, telegram)
    assert not failed.value.permanent


async def test_telegram_stops_at_the_first_failed_piece(
    http: httpx.AsyncClient, telegram: FakeProvider
) -> None:
    telegram.answer(200, {"ok": True, "result": {"message_id": 1}})
    telegram.answer(502, {"ok": False, "error_code": 502, "description": "Bad Gateway"})
    with pytest.raises(SendFailed) as failed:
        await send_telegram(http, telegram, "z" * 9000)
    assert not failed.value.permanent
    assert len(telegram.requests) == 2  # the third piece was not sent after the second failed


async def test_telegram_connection_refused_is_transient(http: httpx.AsyncClient) -> None:
    closed = FakeProvider(url=f"http://127.0.0.1:{free_port()}", default=lambda n: Answer())
    with pytest.raises(SendFailed) as failed:
        await send_telegram(http, closed)
    assert not failed.value.permanent
    assert TELEGRAM_TOKEN not in failed.value.reason  # the token never reaches last_error


# --- Slack ---------------------------------------------------------------------------------


async def test_slack_posts_to_the_users_dm_with_the_bot_token(
    http: httpx.AsyncClient, slack: FakeProvider
) -> None:
    result = await send_slack(http, slack.url)

    [request] = slack.requests
    assert request["method"] == "POST" and request["path"] == "/chat.postMessage"
    assert request["headers"]["Authorization"] == f"Bearer {SLACK_TOKEN}"
    assert request["json"] == {"channel": "U0123ABCD", "text": "Hello there"}
    assert result.provider_message_id == "1503435956.001"


async def test_slack_error_in_a_200_answer_is_permanent_with_the_error_code(
    http: httpx.AsyncClient, slack: FakeProvider
) -> None:
    slack.answer(200, {"ok": False, "error": "channel_not_found"})
    with pytest.raises(SendFailed) as failed:
        await send_slack(http, slack.url)
    assert failed.value.permanent and failed.value.reason == "channel_not_found"


async def test_slack_ratelimited_in_a_200_answer_is_transient(
    http: httpx.AsyncClient, slack: FakeProvider
) -> None:
    slack.answer(200, {"ok": False, "error": "ratelimited"}, {"Retry-After": "30"})
    with pytest.raises(SendFailed) as failed:
        await send_slack(http, slack.url)
    assert not failed.value.permanent and failed.value.retry_after == 30.0


async def test_slack_http_429_is_transient_with_retry_after(
    http: httpx.AsyncClient, slack: FakeProvider
) -> None:
    slack.answer(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "12"})
    with pytest.raises(SendFailed) as failed:
        await send_slack(http, slack.url)
    assert not failed.value.permanent and failed.value.retry_after == 12.0


async def test_slack_500_is_transient(
    http: httpx.AsyncClient, slack: FakeProvider
) -> None:
    slack.answer(500, {"ok": False, "error": "internal_error"})
    with pytest.raises(SendFailed) as failed:
        await send_slack(http, slack.url)
    assert not failed.value.permanent


async def test_slack_connection_refused_is_transient(http: httpx.AsyncClient) -> None:
    with pytest.raises(SendFailed) as failed:
        await send_slack(http, f"http://127.0.0.1:{free_port()}")
    assert not failed.value.permanent


# --- email ---------------------------------------------------------------------------------


async def test_email_sends_the_text_with_subject_and_a_stable_message_id(smtp: StartSMTP) -> None:
    handler = RecordingHandler()
    port = smtp(handler)

    result = await send_email(port, "Your results are ready.", email_subject="Lab results")

    [envelope] = handler.envelopes
    assert envelope.mail_from == "bot@example.com"
    assert envelope.rcpt_tos == ["jane@example.org"]
    sent = email.message_from_bytes(envelope.content, policy=email.policy.default)
    assert sent["From"] == "bot@example.com" and sent["To"] == "jane@example.org"
    assert sent["Subject"] == "Lab results"
    assert sent["Message-ID"] == "<dlv_0123456789abcdef@chatbots>"
    assert sent.get_content_type() == "text/plain"
    # SMTP carries lines ending in CRLF; the text itself is unchanged.
    assert sent.get_content().replace("\r\n", "\n") == "Your results are ready.\n"
    assert result.provider_message_id == "<dlv_0123456789abcdef@chatbots>"

    # A retry of the same delivery carries the same Message-ID.
    await send_email(port, "Your results are ready.", email_subject="Lab results")
    resent = email.message_from_bytes(handler.envelopes[1].content, policy=email.policy.default)
    assert resent["Message-ID"] == sent["Message-ID"]


async def test_email_subject_defaults_to_new_message(smtp: StartSMTP) -> None:
    handler = RecordingHandler()
    await send_email(smtp(handler))
    sent = email.message_from_bytes(handler.envelopes[0].content, policy=email.policy.default)
    assert sent["Subject"] == "New message"


async def test_email_550_is_permanent_with_the_servers_text(smtp: StartSMTP) -> None:
    with pytest.raises(SendFailed) as failed:
        await send_email(smtp(RefusingRecipient()))
    assert failed.value.permanent
    assert "550" in failed.value.reason and "mailbox unavailable" in failed.value.reason


async def test_email_451_is_transient(smtp: StartSMTP) -> None:
    with pytest.raises(SendFailed) as failed:
        await send_email(smtp(DeferringData()))
    assert not failed.value.permanent
    assert "451" in failed.value.reason and "Greylisted" in failed.value.reason


async def test_email_connection_refused_is_transient() -> None:
    with pytest.raises(SendFailed) as failed:
        await send_email(free_port())
    assert not failed.value.permanent
