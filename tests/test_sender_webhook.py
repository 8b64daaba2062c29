"""The ``api`` platform's webhook sender and its SSRF guard (SPEC §6), against a loopback fake
receiver that checks each request the way a real receiver would: with a Standard Webhooks library.

No traffic leaves loopback: the only non-loopback work is name resolution, and every client used
here refuses (and records) any connection to a host other than the loopback ones.
"""

import asyncio
import base64
import dataclasses
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import pytest
from aiohttp import web
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from app.channels.base import OutboundMessage, SendContext, SendFailed
from app.channels.webhook import WebhookSender, new_signing_secret
from app.channels.webhook_target import UnsafeWebhookTarget, check_webhook_target
from app.config import Settings

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass
class Received:
    body: bytes
    headers: dict[str, str]


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1: records each raw request and answers from ``answers``
    (status, text, headers) in turn, then 200."""

    port: int = 0
    received: list[Received] = field(default_factory=list)
    answers: list[tuple[int, str, dict[str, str]]] = field(default_factory=list)

    def url(self, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}/hooks/chatbots"

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(Received(await request.read(), dict(request.headers)))
        status, text, headers = self.answers.pop(0) if self.answers else (200, "ok", {})
        return web.Response(status=status, text=text, headers=headers)


class LoopbackOnlyTransport(httpx.AsyncBaseTransport):
    """Passes requests to loopback hosts through; records and refuses any other, so a guard
    that let a private target through fails the test instead of reaching the network."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.host not in LOOPBACK_HOSTS:
            raise AssertionError(f"a request left loopback: {request.url}")
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
async def receiver():  # type: ignore[no-untyped-def]
    fake = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/chatbots", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.port = runner.addresses[0][1]
    yield fake
    await runner.cleanup()


@pytest.fixture
async def transport():  # type: ignore[no-untyped-def]
    t = LoopbackOnlyTransport()
    yield t
    await t.aclose()


def context(transport: LoopbackOnlyTransport, *, allow_private: bool) -> SendContext:
    return SendContext(
        http=httpx.AsyncClient(transport=transport),
        settings=Settings(webhook_allow_private=allow_private, send_timeout_seconds=5.0),
    )


CREATED_AT = datetime(2026, 12, 1, 13, 30, 5, 250000, tzinfo=UTC)


def message(text: str = "Hello from the bot: ünïcode ✓ \"quoted\"") -> OutboundMessage:
    return OutboundMessage(
        delivery_id="dlv_01JABCDEF",
        session_id="ses_42",
        chatbot_id="bot_pub_7",
        participant_id="par_pub_9",
        recipient="par_pub_9",
        text=text,
        created_at=CREATED_AT,
    )


def config(url: str, secret: str) -> dict[str, str]:
    return {"callback_url": url, "signing_secret": secret}


# The sender --------------------------------------------------------------------------------


async def test_delivers_a_standard_webhooks_signed_json_body_with_every_field(receiver, transport) -> None:
    secret = new_signing_secret()
    receiver.answers.append((200, "taken", {"X-Message-Id": "rcv-123"}))
    before = int(time.time())

    result = await WebhookSender().send(
        context(transport, allow_private=True), message(), config(receiver.url(), secret)
    )

    assert result.provider_message_id == "rcv-123"
    [got] = receiver.received
    payload = Webhook(secret).verify(got.body, got.headers)  # raises unless correctly signed
    assert payload == {
        "type": "message",
        "delivery_id": "dlv_01JABCDEF",
        "session_id": "ses_42",
        "chatbot": "bot_pub_7",
        "participant": "par_pub_9",
        "message": "Hello from the bot: ünïcode ✓ \"quoted\"",
        "created_at": "2026-12-01T13:30:05.250000Z",
    }
    assert datetime.fromisoformat(payload["created_at"]) == CREATED_AT
    headers = {k.lower(): v for k, v in got.headers.items()}
    assert headers["content-type"] == "application/json"
    assert headers["webhook-id"] == "dlv_01JABCDEF"
    assert before - 1 <= int(headers["webhook-timestamp"]) <= int(time.time()) + 1
    version, signature = headers["webhook-signature"].split(",")
    assert version == "v1" and len(base64.b64decode(signature)) == 32  # HMAC-SHA256
    # The signature covers the exact bytes: one byte more and a receiver refuses it.
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(got.body + b" ", got.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_signing_secret()).verify(got.body, got.headers)


async def test_naive_created_at_is_sent_as_utc(receiver, transport) -> None:
    secret = new_signing_secret()
    msg = dataclasses.replace(message(), created_at=datetime(2026, 1, 2, 3, 4, 5))  # stored naive UTC
    await WebhookSender().send(context(transport, allow_private=True), msg, config(receiver.url(), secret))
    payload = Webhook(secret).verify(receiver.received[0].body, receiver.received[0].headers)
    assert payload["created_at"] == "2026-01-02T03:04:05Z"


async def test_no_message_id_header_gives_no_provider_message_id(receiver, transport) -> None:
    result = await WebhookSender().send(
        context(transport, allow_private=True), message(), config(receiver.url(), new_signing_secret())
    )
    assert result.provider_message_id is None and len(receiver.received) == 1


async def test_a_retry_carries_the_same_webhook_id_so_receivers_can_deduplicate(receiver, transport) -> None:
    secret = new_signing_secret()
    receiver.answers.append((503, "try later", {}))
    sender, ctx = WebhookSender(), context(transport, allow_private=True)

    with pytest.raises(SendFailed) as first:
        await sender.send(ctx, message(), config(receiver.url(), secret))
    assert not first.value.permanent
    await sender.send(ctx, message(), config(receiver.url(), secret))

    assert len(receiver.received) == 2
    ids = [Webhook(secret).verify(r.body, r.headers) and r.headers["webhook-id"] for r in receiver.received]
    assert ids == ["dlv_01JABCDEF", "dlv_01JABCDEF"]


async def test_a_500_is_transient(receiver, transport) -> None:
    receiver.answers.append((500, "boom", {}))
    with pytest.raises(SendFailed) as failed:
        await WebhookSender().send(
            context(transport, allow_private=True), message(), config(receiver.url(), new_signing_secret())
        )
    assert not failed.value.permanent and failed.value.retry_after is None
    assert "500" in failed.value.reason


async def test_a_429_is_transient_and_honours_retry_after(receiver, transport) -> None:
    receiver.answers.append((429, "slow down", {"Retry-After": "12"}))
    with pytest.raises(SendFailed) as failed:
        await WebhookSender().send(
            context(transport, allow_private=True), message(), config(receiver.url(), new_signing_secret())
        )
    assert not failed.value.permanent and failed.value.retry_after == 12.0


async def test_a_400_is_permanent_with_the_receivers_text(receiver, transport) -> None:
    receiver.answers.append((400, '{"error": "unknown participant par_pub_9"}', {}))
    with pytest.raises(SendFailed) as failed:
        await WebhookSender().send(
            context(transport, allow_private=True), message(), config(receiver.url(), new_signing_secret())
        )
    assert failed.value.permanent
    assert "400" in failed.value.reason and "unknown participant par_pub_9" in failed.value.reason


async def test_a_redirect_is_not_followed(receiver, transport) -> None:
    receiver.answers.append((302, "", {"Location": "http://169.254.169.254/latest/meta-data/"}))
    with pytest.raises(SendFailed) as failed:
        await WebhookSender().send(
            context(transport, allow_private=True), message(), config(receiver.url(), new_signing_secret())
        )
    assert failed.value.permanent and "302" in failed.value.reason
    assert [r.url.host for r in transport.requests] == ["127.0.0.1"]


async def test_connection_refused_is_transient(transport) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SendFailed) as failed:
        await WebhookSender().send(
            context(transport, allow_private=True),
            message(),
            config(f"http://127.0.0.1:{port}/hook", new_signing_secret()),
        )
    assert not failed.value.permanent and "ConnectError" in failed.value.reason


async def test_a_channel_without_url_or_secret_fails_permanently(transport) -> None:
    for bad in ({"callback_url": "https://example.com/hook"}, {"signing_secret": new_signing_secret()}):
        with pytest.raises(SendFailed) as failed:
            await WebhookSender().send(context(transport, allow_private=True), message(), bad)
        assert failed.value.permanent
    assert transport.requests == []


def test_new_signing_secrets_are_whsec_with_enough_randomness() -> None:
    secrets_ = {new_signing_secret() for _ in range(20)}
    assert len(secrets_) == 20
    for secret in secrets_:
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) >= 24
        Webhook(secret)  # usable by a receiver's library


# The SSRF guard, through the sender --------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "localhost", "[::1]", "10.0.0.1", "169.254.169.254", "100.64.0.1", "[::ffff:127.0.0.1]"],
)
async def test_private_targets_are_refused_and_nothing_is_sent(receiver, transport, host: str) -> None:
    url = receiver.url(host, scheme="https")
    with pytest.raises(SendFailed) as failed:
        await WebhookSender().send(context(transport, allow_private=False), message(), config(url, new_signing_secret()))
    assert failed.value.permanent and "public addresses" in failed.value.reason
    assert receiver.received == [] and transport.requests == []


async def test_plain_http_is_refused_without_allow_private(receiver, transport) -> None:
    with pytest.raises(SendFailed) as failed:
        await WebhookSender().send(
            context(transport, allow_private=False), message(), config(receiver.url(), new_signing_secret())
        )
    assert failed.value.permanent and "https" in failed.value.reason
    assert receiver.received == [] and transport.requests == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_allow_private_lets_loopback_http_through(receiver, transport, host: str) -> None:
    secret = new_signing_secret()
    await WebhookSender().send(context(transport, allow_private=True), message(), config(receiver.url(host), secret))
    [got] = receiver.received
    assert Webhook(secret).verify(got.body, got.headers)["delivery_id"] == "dlv_01JABCDEF"


async def test_an_unresolvable_host_is_refused(transport) -> None:
    with pytest.raises(SendFailed) as failed:
        await WebhookSender().send(
            context(transport, allow_private=False),
            message(),
            config("https://nonexistent.invalid/hook", new_signing_secret()),
        )
    assert failed.value.permanent and "cannot resolve" in failed.value.reason
    assert transport.requests == []


# The SSRF guard itself ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, why",
    [
        ("http://203.0.113.10/hook", "https"),
        ("ftp://example.com/hook", "https"),
        ("https://user:pw@93.184.215.14/hook", "credentials"),
        ("https:///hook", "no host"),
        ("https://93.184.215.14:99999/hook", "not a valid URL"),
        ("https://127.0.0.1/hook", "loopback"),
        ("https://2130706433/hook", "127.0.0.1"),  # 127.0.0.1 spelled as one number
        ("https://0.0.0.0/hook", "resolves to 0.0.0.0"),
        ("https://10.1.2.3/hook", "private"),
        ("https://172.16.0.1/hook", "private"),
        ("https://192.168.1.1/hook", "private"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://100.64.0.1/hook", "shared"),
        ("https://100.127.255.254/hook", "shared"),
        ("https://224.0.0.1/hook", "multicast"),
        ("https://240.0.0.1/hook", "resolves to 240.0.0.1"),
        ("https://[::1]/hook", "loopback"),
        ("https://[::]/hook", "resolves to ::"),
        ("https://[fe80::1]/hook", "link-local"),
        ("https://[fd00::1]/hook", "private"),
        ("https://[::ffff:10.0.0.1]/hook", "10.0.0.1"),
        ("https://[::ffff:127.0.0.1]/hook", "127.0.0.1"),
        ("https://[2002:7f00:1::]/hook", "127.0.0.1"),  # 6to4 around 127.0.0.1
        ("https://[64:ff9b::a00:1]/hook", "10.0.0.1"),  # NAT64 around 10.0.0.1
        ("https://localhost/hook", "loopback"),
        ("https://nonexistent.invalid/hook", "cannot resolve"),
    ],
)
async def test_guard_refuses(url: str, why: str) -> None:
    with pytest.raises(UnsafeWebhookTarget) as refused:
        await check_webhook_target(url, allow_private=False)
    assert why in str(refused.value)


@pytest.mark.parametrize(
    "url", ["https://93.184.215.14/hook", "https://[2606:4700:4700::1111]/hook", "https://8.8.8.8:8443/x"]
)
async def test_guard_accepts_public_https_targets(url: str) -> None:
    await check_webhook_target(url, allow_private=False)  # resolution only: literal IPs, no connect


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/hook", "https://10.0.0.1/hook", "http://localhost/hook", "https://[::1]/x"]
)
async def test_guard_with_allow_private_accepts_private_and_http(url: str) -> None:
    await check_webhook_target(url, allow_private=True)


async def test_guard_with_allow_private_still_refuses_credentials_other_schemes_and_bad_names() -> None:
    for url, why in [
        ("http://u:p@127.0.0.1/hook", "credentials"),
        ("ftp://127.0.0.1/hook", "https"),
        ("https://nonexistent.invalid/hook", "cannot resolve"),
    ]:
        with pytest.raises(UnsafeWebhookTarget) as refused:
            await check_webhook_target(url, allow_private=True)
        assert why in str(refused.value)


async def test_guard_resolves_on_the_loop_each_time_so_a_rebound_name_is_refused(monkeypatch) -> None:
    """A name public at channel creation and pointed at a private address later (DNS rebinding)
    is refused by the check at send time: each check asks the loop's resolver afresh."""
    loop = asyncio.get_running_loop()
    answers = iter(["93.184.215.14", "10.9.8.7"])
    calls: list[str] = []

    async def getaddrinfo(host, port, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    await check_webhook_target("https://rebound.example/hook", allow_private=False)  # creation
    with pytest.raises(UnsafeWebhookTarget) as refused:  # send, after the name moved
        await check_webhook_target("https://rebound.example/hook", allow_private=False)
    assert calls == ["rebound.example", "rebound.example"] and "10.9.8.7" in str(refused.value)


async def test_guard_refuses_when_any_one_address_is_private(monkeypatch) -> None:
    loop = asyncio.get_running_loop()

    async def getaddrinfo(host, port, **kwargs):  # type: ignore[no-untyped-def]
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
        ]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    with pytest.raises(UnsafeWebhookTarget) as refused:
        await check_webhook_target("https://mixed.example/hook", allow_private=False)
    assert "::1" in str(refused.value) and "loopback" in str(refused.value)
