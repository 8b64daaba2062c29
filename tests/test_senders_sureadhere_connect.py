"""The SureAdhere and CommCare Connect senders (SPEC §6) against a loopback fake of each
provider: an aiohttp server that records every request (method, path, headers, raw body) and
answers what the test queued for that path, else a default. Nothing of ours is mocked; the
SureAdhere sender's clock is passed in so a test can move it past a token's expiry."""

import asyncio
import base64
import json
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.channels.base import OutboundMessage, SendContext, SendFailed, SendResult
from app.channels.commcare_connect import CommCareConnectSender, connect_message_id
from app.channels.config import InvalidChannelConfig, check_channel_config
from app.channels.sureadhere import SureAdhereSender
from app.config import Settings

# --- a fake provider: per-path answer queues, else a default ---------------------------------


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes

    @property
    def form(self) -> dict[str, str]:
        return {key: values[0] for key, values in parse_qs(self.raw.decode()).items()}

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


@dataclass
class Answer:
    status: int = 200
    body: Any = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class FakeProvider:
    defaults: dict[str, Callable[[int], Answer]]
    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    queued: dict[str, list[Answer]] = field(default_factory=dict)

    def answer(self, path: str, *answers: Answer) -> None:
        """The next requests to ``path`` get these answers, in order, then the default."""
        self.queued.setdefault(path, []).extend(answers)

    def to(self, path: str) -> list[Recorded]:
        return [request for request in self.requests if request.path == path]

    async def handle(self, request: web.Request) -> web.Response:
        recorded = Recorded(
            request.method, request.path, dict(request.headers), await request.read()
        )
        self.requests.append(recorded)
        queue = self.queued.get(request.path)
        if queue:
            answer = queue.pop(0)
        elif request.path in self.defaults:
            answer = self.defaults[request.path](len(self.to(request.path)))
        else:
            answer = Answer(404, {"error": "no such path"})
        if answer.delay:
            await asyncio.sleep(answer.delay)
        return web.json_response(answer.body, status=answer.status, headers=answer.headers)


async def start_fake(
    defaults: dict[str, Callable[[int], Answer]],
) -> tuple[FakeProvider, web.AppRunner]:
    fake = FakeProvider(defaults)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    return fake, runner


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


def send_context(http: httpx.AsyncClient, **settings: Any) -> SendContext:
    return SendContext(http=http, settings=Settings(_env_file=None, **settings))


def outbound(
    text: str = "Time to take your medication",
    recipient: str = "patient-4711",
    delivery_id: str = "0b7e5d52-2c4f-4b8e-9d55-5b8f0f7a1c3e",
    participant_metadata: dict[str, Any] | None = None,
) -> OutboundMessage:
    return OutboundMessage(
        delivery_id=delivery_id,
        session_id="ses_1",
        chatbot_id="bot_1",
        participant_id="par_1",
        recipient=recipient,
        text=text,
        created_at=datetime(2026, 12, 1, tzinfo=UTC),
        participant_metadata=participant_metadata or {},
    )


# --- SureAdhere ------------------------------------------------------------------------------

TOKEN_PATH = "/oauth2/token"
SEND_PATH = "/treatment/external/send-msg"


class Clock:
    """The SureAdhere sender's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def issued_token(n: int) -> Answer:
    return Answer(body={"access_token": f"token-{n}", "token_type": "Bearer", "expires_in": 3600})


@pytest.fixture
async def sureadhere() -> AsyncIterator[FakeProvider]:
    fake, runner = await start_fake({TOKEN_PATH: issued_token, SEND_PATH: lambda n: Answer()})
    yield fake
    await runner.cleanup()


def sureadhere_config(fake_url: str, **overrides: str) -> dict[str, Any]:
    return {
        "client_id": "ocs-client",
        "client_secret": "s3cret",
        "auth_url": f"{fake_url}{TOKEN_PATH}",
        "base_url": fake_url,
        "tenant_id": "tenant-42",
    } | overrides


async def send_sureadhere(http: httpx.AsyncClient, fake_url: str) -> SendResult:
    config = sureadhere_config(fake_url)
    return await SureAdhereSender().send(send_context(http), outbound(), config)


async def test_sureadhere_fetches_a_token_then_posts_send_msg_with_it(
    http: httpx.AsyncClient, sureadhere: FakeProvider
) -> None:
    result = await SureAdhereSender().send(
        send_context(http), outbound(), sureadhere_config(sureadhere.url)
    )

    token_request, send_request = sureadhere.requests
    assert (token_request.method, token_request.path) == ("POST", TOKEN_PATH)
    assert token_request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert token_request.form == {
        "grant_type": "client_credentials",
        "client_id": "ocs-client",
        "client_secret": "s3cret",
    }
    assert (send_request.method, send_request.path) == ("POST", SEND_PATH)
    assert send_request.headers["Authorization"] == "Bearer token-1"
    assert send_request.headers["Content-Type"] == "application/json"
    assert send_request.json == {
        "patient_Id": "patient-4711",
        "message_Body": "Time to take your medication",
    }
    assert result.provider_message_id is None


async def test_sureadhere_sends_the_scope_when_the_channel_sets_one(
    http: httpx.AsyncClient, sureadhere: FakeProvider
) -> None:
    config = sureadhere_config(sureadhere.url, client_scope="sureadhere.api")
    await SureAdhereSender().send(send_context(http), outbound(), config)
    assert sureadhere.to(TOKEN_PATH)[0].form["scope"] == "sureadhere.api"


async def test_sureadhere_send_msg_path_replaces_a_path_in_base_url(
    http: httpx.AsyncClient, sureadhere: FakeProvider
) -> None:
    """As Open Chat Studio joins it, so a base_url configured there reaches the same endpoint."""
    config = sureadhere_config(sureadhere.url, base_url=f"{sureadhere.url}/api/v2/")
    await SureAdhereSender().send(send_context(http), outbound(), config)
    assert [request.path for request in sureadhere.requests] == [TOKEN_PATH, SEND_PATH]


async def test_sureadhere_reuses_the_token_for_later_sends(
    http: httpx.AsyncClient, sureadhere: FakeProvider
) -> None:
    sender = SureAdhereSender()
    config = sureadhere_config(sureadhere.url)
    await sender.send(send_context(http), outbound(), config)
    await sender.send(send_context(http), outbound("Second message"), config)

    assert len(sureadhere.to(TOKEN_PATH)) == 1
    sends = sureadhere.to(SEND_PATH)
    assert [request.headers["Authorization"] for request in sends] == ["Bearer token-1"] * 2
    assert sends[1].json["message_Body"] == "Second message"


async def test_sureadhere_concurrent_sends_share_one_token_request(
    http: httpx.AsyncClient, sureadhere: FakeProvider
) -> None:
    # A slow token endpoint, so every send is waiting for a token at the same time.
    slow = Answer(body={"access_token": "slow", "expires_in": 3600}, delay=0.2)
    sureadhere.answer(TOKEN_PATH, slow)
    sender = SureAdhereSender()
    config = sureadhere_config(sureadhere.url)

    await asyncio.gather(*(sender.send(send_context(http), outbound(), config) for _ in range(5)))

    assert len(sureadhere.to(TOKEN_PATH)) == 1
    assert [r.headers["Authorization"] for r in sureadhere.to(SEND_PATH)] == ["Bearer slow"] * 5


async def test_sureadhere_renews_the_token_shortly_before_it_expires(
    http: httpx.AsyncClient, sureadhere: FakeProvider
) -> None:
    clock = Clock()
    sender = SureAdhereSender(clock=clock)
    config = sureadhere_config(sureadhere.url)

    await sender.send(send_context(http), outbound(), config)
    clock.now += 3600 - 60 - 1  # a second before the margin: still the cached token
    await sender.send(send_context(http), outbound(), config)
    clock.now += 2  # within the last minute of its hour: renewed
    await sender.send(send_context(http), outbound(), config)

    assert len(sureadhere.to(TOKEN_PATH)) == 2
    authorizations = [request.headers["Authorization"] for request in sureadhere.to(SEND_PATH)]
    assert authorizations == ["Bearer token-1", "Bearer token-1", "Bearer token-2"]


async def test_sureadhere_keeps_a_token_without_expires_in_for_five_minutes(
    http: httpx.AsyncClient, sureadhere: FakeProvider
) -> None:
    sureadhere.answer(TOKEN_PATH, Answer(body={"access_token": "no-expiry"}))
    clock = Clock()
    sender = SureAdhereSender(clock=clock)
    config = sureadhere_config(sureadhere.url)

    await sender.send(send_context(http), outbound(), config)
    clock.now += 269  # 300 s less a tenth
    await sender.send(send_context(http), outbound(), config)
    clock.now += 2
    await sender.send(send_context(http), outbound(), config)

    assert len(sureadhere.to(TOKEN_PATH)) == 2


async def test_sureadhere_401_drops_the_token_and_is_transient(
    http: httpx.AsyncClient, sureadhere: FakeProvider
) -> None:
    sender = SureAdhereSender()
    config = sureadhere_config(sureadhere.url)
    await sender.send(send_context(http), outbound(), config)
    sureadhere.answer(SEND_PATH, Answer(401, {"message": "Token expired"}))

    with pytest.raises(SendFailed) as failed:
        await sender.send(send_context(http), outbound(), config)
    assert not failed.value.permanent and not failed.value.consent_withdrawn
    assert "401" in failed.value.reason and "Token expired" in failed.value.reason

    # The retry asks for a new token and sends with it.
    await sender.send(send_context(http), outbound(), config)
    assert len(sureadhere.to(TOKEN_PATH)) == 2
    assert sureadhere.to(SEND_PATH)[-1].headers["Authorization"] == "Bearer token-2"


async def test_sureadhere_each_client_secret_gets_its_own_token(
    http: httpx.AsyncClient, sureadhere: FakeProvider
) -> None:
    """A channel naming another's client id without its secret cannot use its cached token."""
    sender = SureAdhereSender()
    await sender.send(send_context(http), outbound(), sureadhere_config(sureadhere.url))
    sureadhere.answer(TOKEN_PATH, Answer(401, {"error": "invalid_client"}))

    with pytest.raises(SendFailed) as failed:
        await sender.send(
            send_context(http), outbound(), sureadhere_config(sureadhere.url, client_secret="guess")
        )
    assert failed.value.permanent
    assert len(sureadhere.to(TOKEN_PATH)) == 2 and len(sureadhere.to(SEND_PATH)) == 1


async def test_sureadhere_500_is_transient(
    http: httpx.AsyncClient, sureadhere: FakeProvider
) -> None:
    sureadhere.answer(SEND_PATH, Answer(500, {"message": "Internal Server Error"}))
    with pytest.raises(SendFailed) as failed:
        await send_sureadhere(http, sureadhere.url)
    assert not failed.value.permanent and failed.value.retry_after is None


async def test_sureadhere_429_is_transient_with_retry_after(
    http: httpx.AsyncClient, sureadhere: FakeProvider
) -> None:
    sureadhere.answer(
        SEND_PATH, Answer(429, {"message": "Too many requests"}, {"Retry-After": "20"})
    )
    with pytest.raises(SendFailed) as failed:
        await send_sureadhere(http, sureadhere.url)
    assert not failed.value.permanent and failed.value.retry_after == 20.0


async def test_sureadhere_400_is_permanent_with_the_providers_text(
    http: httpx.AsyncClient, sureadhere: FakeProvider
) -> None:
    sureadhere.answer(SEND_PATH, Answer(400, {"message": "Patient not found"}))
    with pytest.raises(SendFailed) as failed:
        await send_sureadhere(http, sureadhere.url)
    assert failed.value.permanent and not failed.value.consent_withdrawn
    assert failed.value.reason.startswith("400: ") and "Patient not found" in failed.value.reason


@pytest.mark.parametrize(
    ("answer", "permanent", "retry_after"),
    [
        (Answer(401, {"error": "invalid_client", "error_description": "Bad secret"}), True, None),
        (Answer(400, {"error": "invalid_scope"}), True, None),
        (Answer(503, {"error": "temporarily_unavailable"}), False, None),
        (Answer(429, {"error": "slow_down"}, {"Retry-After": "7"}), False, 7.0),
    ],
    ids=["401-invalid-client", "400-invalid-scope", "503", "429"],
)
async def test_sureadhere_token_endpoint_failures_are_classified_like_sends(
    http: httpx.AsyncClient,
    sureadhere: FakeProvider,
    answer: Answer,
    permanent: bool,
    retry_after: float | None,
) -> None:
    sureadhere.answer(TOKEN_PATH, answer)
    with pytest.raises(SendFailed) as failed:
        await send_sureadhere(http, sureadhere.url)
    assert failed.value.permanent is permanent and failed.value.retry_after == retry_after
    assert failed.value.reason.startswith(f"token endpoint {answer.status}: {answer.body['error']}")
    assert sureadhere.to(SEND_PATH) == []  # nothing sent without a token


async def test_sureadhere_token_error_text_keeps_the_description(
    http: httpx.AsyncClient, sureadhere: FakeProvider
) -> None:
    sureadhere.answer(
        TOKEN_PATH, Answer(401, {"error": "invalid_client", "error_description": "Bad secret"})
    )
    with pytest.raises(SendFailed) as failed:
        await send_sureadhere(http, sureadhere.url)
    assert failed.value.reason == "token endpoint 401: invalid_client: Bad secret"
    assert "s3cret" not in failed.value.reason


async def test_sureadhere_a_200_without_a_token_is_permanent(
    http: httpx.AsyncClient, sureadhere: FakeProvider
) -> None:
    sureadhere.answer(TOKEN_PATH, Answer(200, {"welcome": "to the login page"}))
    with pytest.raises(SendFailed) as failed:
        await send_sureadhere(http, sureadhere.url)
    assert failed.value.permanent and "access_token" in failed.value.reason
    assert sureadhere.to(SEND_PATH) == []


async def test_sureadhere_connection_refused_is_transient(http: httpx.AsyncClient) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SendFailed) as failed:
        await SureAdhereSender().send(send_context(http), outbound(), sureadhere_config(closed))
    assert not failed.value.permanent
    assert "s3cret" not in failed.value.reason


async def test_sureadhere_send_msg_connection_refused_is_transient(
    http: httpx.AsyncClient, sureadhere: FakeProvider
) -> None:
    config = sureadhere_config(sureadhere.url, base_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(SendFailed) as failed:
        await SureAdhereSender().send(send_context(http), outbound(), config)
    assert not failed.value.permanent


async def test_sureadhere_missing_config_is_permanent_without_a_request(
    http: httpx.AsyncClient, sureadhere: FakeProvider
) -> None:
    config = sureadhere_config(sureadhere.url)
    del config["client_secret"]
    with pytest.raises(SendFailed) as failed:
        await SureAdhereSender().send(send_context(http), outbound(), config)
    assert failed.value.permanent and "client_secret" in failed.value.reason
    assert sureadhere.requests == []


# --- CommCare Connect ------------------------------------------------------------------------

CONNECT_PATH = "/messaging/send_fcm/"
CONNECT_CLIENT = ("ocs-messaging-server", "connect-secret")
CONNECT_BASIC = "Basic " + base64.b64encode(b"ocs-messaging-server:connect-secret").decode()
CHANNEL_ID = "3f2c1a9e-6b7d-4e21-8c55-0a1b2c3d4e5f"
KEY = os.urandom(32)


def connect_metadata(**overrides: Any) -> dict[str, Any]:
    return {
        "consent": True,
        "commcare_connect_channel_id": CHANNEL_ID,
        "commcare_connect_encryption_key": base64.b64encode(KEY).decode(),
    } | overrides


@pytest.fixture
async def connect() -> AsyncIterator[FakeProvider]:
    fake, runner = await start_fake(
        {CONNECT_PATH: lambda n: Answer(body={"message_id": "from-connect"})}
    )
    yield fake
    await runner.cleanup()


async def send_connect(
    http: httpx.AsyncClient,
    server_url: str,
    text: str = "Your visit is tomorrow",
    delivery_id: str = "0b7e5d52-2c4f-4b8e-9d55-5b8f0f7a1c3e",
    **metadata: Any,
) -> SendResult:
    client_id, client_secret = CONNECT_CLIENT
    context = send_context(
        http,
        commcare_connect_server_url=server_url,
        commcare_connect_client_id=client_id,
        commcare_connect_client_secret=client_secret,
    )
    message = outbound(
        text,
        recipient="connect-user-1",
        delivery_id=delivery_id,
        participant_metadata=connect_metadata(**metadata),
    )
    return await CommCareConnectSender().send(context, message, {})


def decrypt(content: dict[str, str], key: bytes = KEY) -> str:
    nonce = base64.b64decode(content["nonce"])
    sealed = base64.b64decode(content["ciphertext"]) + base64.b64decode(content["tag"])
    return AESGCM(key).decrypt(nonce, sealed, None).decode("utf-8")


async def test_connect_posts_the_encrypted_text_to_the_participants_channel(
    http: httpx.AsyncClient, connect: FakeProvider
) -> None:
    result = await send_connect(http, connect.url, "Your visit is tomorrow — ça va? 👍")

    [request] = connect.requests
    assert (request.method, request.path) == ("POST", CONNECT_PATH)
    assert request.headers["Authorization"] == CONNECT_BASIC
    assert request.headers["Content-Type"] == "application/json"
    body = request.json
    assert set(body) == {"channel", "message_id", "content"}
    assert body["channel"] == CHANNEL_ID
    assert body["message_id"] == "0b7e5d52-2c4f-4b8e-9d55-5b8f0f7a1c3e"  # the delivery id
    assert set(body["content"]) == {"ciphertext", "tag", "nonce"}
    assert len(base64.b64decode(body["content"]["nonce"])) == 12
    assert len(base64.b64decode(body["content"]["tag"])) == 16
    assert "visit" not in request.raw.decode()  # only ciphertext on the wire
    assert decrypt(body["content"]) == "Your visit is tomorrow — ça va? 👍"
    assert result.provider_message_id == "from-connect"


async def test_connect_a_retry_carries_the_same_message_id_and_a_fresh_nonce(
    http: httpx.AsyncClient, connect: FakeProvider
) -> None:
    await send_connect(http, connect.url)
    await send_connect(http, connect.url)

    first, second = (request.json for request in connect.requests)
    assert first["message_id"] == second["message_id"]
    assert first["content"]["nonce"] != second["content"]["nonce"]
    assert decrypt(first["content"]) == decrypt(second["content"]) == "Your visit is tomorrow"


def test_connect_message_id_is_a_uuid_derived_from_any_delivery_id() -> None:
    uuid_id = "0b7e5d52-2c4f-4b8e-9d55-5b8f0f7a1c3e"
    assert connect_message_id(uuid_id) == uuid_id
    assert connect_message_id(uuid_id.replace("-", "")) == uuid_id

    derived = connect_message_id("dlv_42")
    assert derived == connect_message_id("dlv_42")  # stable
    assert derived != connect_message_id("dlv_43")
    assert len(derived) == 36 and derived.count("-") == 4


async def test_connect_message_id_already_exists_means_an_earlier_attempt_arrived(
    http: httpx.AsyncClient, connect: FakeProvider
) -> None:
    connect.answer(CONNECT_PATH, Answer(400, {"errors": "MESSAGE_ID_ALREADY_EXISTS"}))
    result = await send_connect(http, connect.url)
    assert result.provider_message_id == "0b7e5d52-2c4f-4b8e-9d55-5b8f0f7a1c3e"


async def test_connect_no_user_consent_withdraws_consent(
    http: httpx.AsyncClient, connect: FakeProvider
) -> None:
    connect.answer(CONNECT_PATH, Answer(400, {"errors": "NO_USER_CONSENT"}))
    with pytest.raises(SendFailed) as failed:
        await send_connect(http, connect.url)
    assert failed.value.permanent and failed.value.consent_withdrawn
    assert failed.value.reason == "400: NO_USER_CONSENT"


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ({"consent": False}, "not consented"),
        ({"consent": None}, "not consented"),
    ],
    ids=["consent-false", "consent-missing"],
)
async def test_connect_without_consent_sends_nothing(
    http: httpx.AsyncClient, connect: FakeProvider, metadata: dict[str, Any], reason: str
) -> None:
    with pytest.raises(SendFailed) as failed:
        await send_connect(http, connect.url, **metadata)
    assert failed.value.permanent and failed.value.consent_withdrawn
    assert reason in failed.value.reason
    assert connect.requests == []


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ({"commcare_connect_channel_id": None}, "no commcare_connect_channel_id"),
        ({"commcare_connect_encryption_key": ""}, "no commcare_connect_encryption_key"),
        ({"commcare_connect_encryption_key": "not base64!"}, "not a base64 AES key"),
        (
            {"commcare_connect_encryption_key": base64.b64encode(b"short").decode()},
            "not a base64 AES key",
        ),
    ],
    ids=["no-channel-id", "no-key", "key-not-base64", "key-wrong-length"],
)
async def test_connect_without_a_channel_or_a_usable_key_is_permanent(
    http: httpx.AsyncClient, connect: FakeProvider, metadata: dict[str, Any], reason: str
) -> None:
    with pytest.raises(SendFailed) as failed:
        await send_connect(http, connect.url, **metadata)
    assert failed.value.permanent and not failed.value.consent_withdrawn
    assert reason in failed.value.reason
    assert connect.requests == []


async def test_connect_without_server_credentials_is_permanent(
    http: httpx.AsyncClient, connect: FakeProvider
) -> None:
    message = outbound(participant_metadata=connect_metadata())
    context = send_context(http, commcare_connect_server_url=connect.url)
    with pytest.raises(SendFailed) as failed:
        await CommCareConnectSender().send(context, message, {})
    assert failed.value.permanent and "CHATBOTS_COMMCARE_CONNECT_CLIENT_ID" in failed.value.reason
    assert connect.requests == []


async def test_connect_500_is_transient(http: httpx.AsyncClient, connect: FakeProvider) -> None:
    connect.answer(CONNECT_PATH, Answer(500, {"error": "server error"}))
    with pytest.raises(SendFailed) as failed:
        await send_connect(http, connect.url)
    assert not failed.value.permanent and not failed.value.consent_withdrawn


async def test_connect_429_is_transient_with_retry_after(
    http: httpx.AsyncClient, connect: FakeProvider
) -> None:
    throttled = Answer(429, {"detail": "Request was throttled."}, {"Retry-After": "9"})
    connect.answer(CONNECT_PATH, throttled)
    with pytest.raises(SendFailed) as failed:
        await send_connect(http, connect.url)
    assert not failed.value.permanent and failed.value.retry_after == 9.0


async def test_connect_400_is_permanent_with_connects_text(
    http: httpx.AsyncClient, connect: FakeProvider
) -> None:
    connect.answer(CONNECT_PATH, Answer(400, {"errors": "CHANNEL_DOES_NOT_EXIST"}))
    with pytest.raises(SendFailed) as failed:
        await send_connect(http, connect.url)
    assert failed.value.permanent and not failed.value.consent_withdrawn
    assert failed.value.reason.startswith("400: ")
    assert "CHANNEL_DOES_NOT_EXIST" in failed.value.reason


async def test_connect_wrong_credentials_are_permanent_without_withdrawing_consent(
    http: httpx.AsyncClient, connect: FakeProvider
) -> None:
    connect.answer(CONNECT_PATH, Answer(403, {"detail": "Invalid credentials."}))
    with pytest.raises(SendFailed) as failed:
        await send_connect(http, connect.url)
    assert failed.value.permanent and not failed.value.consent_withdrawn
    assert "Invalid credentials." in failed.value.reason


async def test_connect_connection_refused_is_transient(http: httpx.AsyncClient) -> None:
    with pytest.raises(SendFailed) as failed:
        await send_connect(http, f"http://127.0.0.1:{free_port()}")
    assert not failed.value.permanent
    assert "connect-secret" not in failed.value.reason


def test_a_connect_channel_needs_the_bot_name_participants_see() -> None:
    with pytest.raises(InvalidChannelConfig) as refused:
        check_channel_config("commcare_connect", {})
    assert "commcare_connect_bot_name" in str(refused.value)
    check_channel_config("commcare_connect", {"commcare_connect_bot_name": "Health helper"})
