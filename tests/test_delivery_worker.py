"""The delivery worker end to end (SPEC §5.5, §6): trigger_bot through the API, a real
``DeliveryWorker`` on a database of its own, a loopback fake of Telegram's Bot API (and the
fake LLM for written messages). Nothing of ours is mocked."""

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Self

import httpx
import pytest
from aiohttp import web
from sqlalchemy import func, select, update
from standardwebhooks import Webhook

from app.config import Settings
from app.db import utcnow
from app.main import create_app
from app.models import Channel, ChatMessage, Delivery, Participant, ParticipantData
from app.services.admin_channels import create_channel
from app.services.bot_message import INSTRUCTION
from app.services.delivery_worker import DeliveryWorker
from tests.factories import World, add_telegram_channel, make_world
from tests.own_database import own_database

BOT_TOKEN = "123456:worker-test"
TERMINAL = ("sent", "failed", "skipped")


class LoopbackServer:
    """An HTTP server on 127.0.0.1 answering POSTs to ``path`` with ``_handle``."""

    path = "/"

    def __init__(self) -> None:
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        raise NotImplementedError

    async def start(self) -> Self:
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class FakeTelegram(LoopbackServer):
    """Telegram's ``sendMessage`` on 127.0.0.1: records each request; answers from a queue
    (``answer``), else accepts with message ids 1001, 1002, ...; ``delay`` slows every answer."""

    path = "/{tail:.*}"

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict[str, Any]] = []
        self.answers: list[tuple[int, dict[str, Any]]] = []
        self.delay = 0.0

    def answer(self, status: int, body: dict[str, Any]) -> None:
        self.answers.append((status, body))

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append({"path": request.path, "json": await request.json()})
        await asyncio.sleep(self.delay)
        status, body = self.answers.pop(0) if self.answers else (
            200, {"ok": True, "result": {"message_id": 1000 + len(self.requests)}})  # fmt: skip
        return web.json_response(body, status=status)



@dataclass
class Env:
    client: httpx.AsyncClient
    app: Any
    world: World
    telegram: FakeTelegram
    fake_llm: Any

    async def trigger(self, **fields: Any) -> dict[str, Any]:
        body = {"identifier": "4242", "platform": "telegram",
                "experiment": str(self.world.chatbot.public_id), **fields}  # fmt: skip
        response = await self.client.post("/api/trigger_bot", json=body, headers=self.world.headers)
        assert response.status_code == 200, response.text
        return response.json()

    async def status(self, delivery_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/api/deliveries/{delivery_id}", headers=self.world.headers)
        assert response.status_code == 200, response.text
        return response.json()

    async def until(self, delivery_id: str, statuses: tuple[str, ...] = TERMINAL, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = await self.status(delivery_id)
            if status["status"] in statuses or time.monotonic() > deadline:
                return status
            await asyncio.sleep(0.02)

    async def ai_messages(self, session_external_id: str) -> list[str]:
        from app.models import ChatSession

        async with self.app.state.sessionmaker() as s:
            rows = await s.execute(
                select(ChatMessage.content)
                .join(ChatSession, ChatSession.id == ChatMessage.session_id)
                .where(ChatSession.external_id == session_external_id, ChatMessage.role == "ai")
                .order_by(ChatMessage.id)
            )
            return list(rows.scalars())


@pytest.fixture
async def env(tmp_path, fake_llm) -> AsyncIterator[Env]:  # type: ignore[no-untyped-def]
    telegram = await FakeTelegram().start()
    async with own_database(tmp_path) as url:
        settings = Settings(
            database_url=url, secret_key="test-secret-key", worker_in_process=False,
            telegram_api_base=telegram.url, delivery_backoff_seconds=0.0,
            delivery_poll_seconds=0.05, delivery_max_attempts=3, delivery_concurrency=4,
            llm_timeout_seconds=5, llm_total_timeout_seconds=8, llm_max_retries=0, _env_file=None,
        )  # fmt: skip
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            world = await make_world(app.state.sessionmaker, settings, api_base=fake_llm.base_url)
            await add_telegram_channel(app.state.sessionmaker, settings, world, BOT_TOKEN)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                yield Env(client, app, world, telegram, fake_llm)
    await telegram.stop()


@pytest.fixture
async def worker(env: Env) -> AsyncIterator[DeliveryWorker]:
    running = DeliveryWorker(env.app.state.runtime)
    task = asyncio.create_task(running.run())
    yield running
    running.stop()
    await asyncio.wait_for(task, 10)


async def test_a_message_text_is_stored_once_and_sent_as_it_is(env: Env, worker: DeliveryWorker) -> None:
    triggered = await env.trigger(message_text="Your appointment is tomorrow at 10.")
    status = await env.until(triggered["delivery_id"])
    assert status["status"] == "sent" and status["attempts"] == 1 and status["last_error"] is None
    assert status["provider_message_id"] == "1001" and status["sent_at"] is not None
    [request] = env.telegram.requests
    assert request["path"] == f"/bot{BOT_TOKEN}/sendMessage"
    assert request["json"] == {"chat_id": "4242", "text": "Your appointment is tomorrow at 10."}
    assert await env.ai_messages(triggered["session_id"]) == ["Your appointment is tomorrow at 10."]


async def test_a_prompt_text_is_an_instruction_the_chatbots_model_follows(env: Env, worker: DeliveryWorker) -> None:
    before = len(env.fake_llm.requests())
    triggered = await env.trigger(prompt_text="Remind them of tomorrow's appointment.",
                                  page_context={"url": "https://clinic.example/booking"},
                                  participant_data={"name": "Thandi"})  # fmt: skip
    status = await env.until(triggered["delivery_id"])
    assert status["status"] == "sent", status
    [llm_request] = env.fake_llm.requests()[before:]
    system, *rest = llm_request["messages"]
    assert system["role"] == "system" and system["content"].startswith(INSTRUCTION)
    assert "You are a helpful bot." in system["content"]  # the chatbot's own prompt as persona
    assert "Thandi" in system["content"] and "clinic.example/booking" in system["content"]
    assert rest[-1] == {"role": "user", "content": "Remind them of tomorrow's appointment."}
    assert llm_request["model"] == "fake-model"  # the published version's model
    [stored] = await env.ai_messages(triggered["session_id"])
    assert env.telegram.requests[0]["json"]["text"] == stored
    async with env.app.state.sessionmaker() as s:
        instruction_rows = await s.scalar(
            select(func.count()).select_from(ChatMessage).where(ChatMessage.content == "Remind them of tomorrow's appointment.")
        )
    assert instruction_rows == 0  # the instruction is never stored as a message


async def test_transient_failures_are_retried_and_the_message_is_written_once(env: Env, worker: DeliveryWorker) -> None:
    env.telegram.answer(500, {"ok": False, "error_code": 500, "description": "Internal Server Error"})
    env.telegram.answer(429, {"ok": False, "error_code": 429, "description": "Too Many Requests",
                              "parameters": {"retry_after": 0}})  # fmt: skip
    triggered = await env.trigger(message_text="Hello again")
    status = await env.until(triggered["delivery_id"])
    assert status["status"] == "sent" and status["attempts"] == 3, status
    assert [r["json"]["text"] for r in env.telegram.requests] == ["Hello again"] * 3
    assert await env.ai_messages(triggered["session_id"]) == ["Hello again"]


async def test_a_retry_after_is_honoured(env: Env) -> None:
    env.telegram.answer(429, {"ok": False, "error_code": 429, "description": "Too Many Requests",
                              "parameters": {"retry_after": 30}})  # fmt: skip
    triggered = await env.trigger(message_text="Later")
    running = DeliveryWorker(env.app.state.runtime)
    task = asyncio.create_task(running.run())
    status = await env.until(triggered["delivery_id"], ("pending",), timeout=5)
    deadline = time.monotonic() + 5
    while status["attempts"] < 1 and time.monotonic() < deadline:
        status = await env.until(triggered["delivery_id"], ("pending",))
    running.stop()
    await task
    assert status["status"] == "pending" and status["last_error"] == "Too Many Requests"
    async with env.app.state.sessionmaker() as s:
        due = await s.scalar(select(Delivery.next_attempt_at).where(Delivery.public_id == uuid.UUID(triggered["delivery_id"])))
    assert due >= utcnow() + timedelta(seconds=25)
    assert len(env.telegram.requests) == 1


async def test_a_permanent_failure_fails_at_once_with_the_providers_text(env: Env, worker: DeliveryWorker) -> None:
    env.telegram.answer(400, {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"})
    triggered = await env.trigger(message_text="Hi")
    status = await env.until(triggered["delivery_id"])
    assert (status["status"], status["attempts"], status["last_error"]) == ("failed", 1, "Bad Request: chat not found")
    assert len(env.telegram.requests) == 1


async def test_nothing_retries_for_ever(env: Env, worker: DeliveryWorker) -> None:
    for _ in range(5):
        env.telegram.answer(503, {"ok": False, "error_code": 503, "description": "Service Unavailable"})
    triggered = await env.trigger(message_text="Hi")
    status = await env.until(triggered["delivery_id"])
    assert (status["status"], status["attempts"]) == ("failed", 3)  # CHATBOTS_DELIVERY_MAX_ATTEMPTS
    assert status["last_error"] == "Service Unavailable" and len(env.telegram.requests) == 3


async def test_connection_refused_is_retried(env: Env, worker: DeliveryWorker) -> None:
    # The first attempt goes to a port where nothing listens; then the fake is back.
    settings = env.app.state.runtime.settings
    real, settings.telegram_api_base = settings.telegram_api_base, "http://127.0.0.1:9"
    settings.delivery_backoff_seconds = 0.5  # time to bring the provider back before the retry
    triggered = await env.trigger(message_text="Are you there?")
    status = await env.until(triggered["delivery_id"], ("pending", *TERMINAL))
    while status["attempts"] < 1:
        status = await env.until(triggered["delivery_id"], ("pending", *TERMINAL))
    settings.telegram_api_base = real
    status = await env.until(triggered["delivery_id"], ("sent", "failed"))
    assert status["status"] == "sent" and status["attempts"] >= 2, status


async def test_a_channel_disabled_after_the_trigger_skips_the_delivery(env: Env) -> None:
    triggered = await env.trigger(message_text="Hi")
    async with env.app.state.sessionmaker() as s:
        await s.execute(update(Channel).where(Channel.team_id == env.world.team.id).values(enabled=False))
        await s.commit()
    running = DeliveryWorker(env.app.state.runtime)
    task = asyncio.create_task(running.run())
    status = await env.until(triggered["delivery_id"])
    running.stop()
    await task
    assert (status["status"], status["last_error"]) == ("skipped", "The telegram channel for this chatbot is disabled.")
    assert env.telegram.requests == []
    assert await env.ai_messages(triggered["session_id"]) == []  # nothing written for nobody


async def test_a_participant_who_blocked_the_bot_is_skipped_from_then_on(env: Env, worker: DeliveryWorker) -> None:
    env.telegram.answer(403, {"ok": False, "error_code": 403, "description": "Forbidden: bot was blocked by the user"})
    first = await env.trigger(message_text="Hi")
    status = await env.until(first["delivery_id"])
    assert status["status"] == "skipped"
    assert status["last_error"] == "The participant withdrew consent: Forbidden: bot was blocked by the user"
    async with env.app.state.sessionmaker() as s:
        metadata = await s.scalar(select(ParticipantData.system_metadata).where(ParticipantData.chatbot_id == env.world.chatbot.id))
    assert metadata["consent"] is False
    second = await env.trigger(message_text="Hello?")
    status = await env.until(second["delivery_id"])
    assert (status["status"], status["attempts"]) == ("skipped", 1)
    assert len(env.telegram.requests) == 1  # the second was never sent


async def test_stop_lets_sends_in_flight_finish(env: Env) -> None:
    triggered = [await env.trigger(identifier=str(n), message_text=f"m{n}") for n in range(3)]
    env.telegram.delay = 0.3  # a slow provider: the worker is stopped while all three are in flight
    running = DeliveryWorker(env.app.state.runtime)
    task = asyncio.create_task(running.run())
    deadline = time.monotonic() + 5
    while len(env.telegram.requests) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    running.stop()
    await asyncio.wait_for(task, 10)
    statuses = [(await env.status(t["delivery_id"]))["status"] for t in triggered]
    assert statuses == ["sent"] * 3, statuses


async def test_stop_and_drain_gives_back_the_claims_of_sends_it_cuts_off(env: Env) -> None:
    """The API's shutdown: sends slower than the bound are cut off, and their deliveries are
    pending again at once, the attempt not counted, for another worker to take."""
    triggered = [await env.trigger(identifier=str(n), message_text=f"m{n}") for n in range(2)]
    env.telegram.delay = 3  # longer than the bound below
    running = DeliveryWorker(env.app.state.runtime)
    task = asyncio.create_task(running.run())
    deadline = time.monotonic() + 5
    while len(env.telegram.requests) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    started = time.monotonic()
    await running.stop_and_drain(task, 0.3)
    assert time.monotonic() - started < 2 and task.done()
    statuses = [await env.status(t["delivery_id"]) for t in triggered]
    assert [(s["status"], s["attempts"]) for s in statuses] == [("pending", 0)] * 2, statuses


async def test_each_attempt_is_counted_in_the_metrics_by_outcome(env: Env, worker: DeliveryWorker) -> None:
    from tests.prometheus import scrape, value

    before = await scrape(env.client)
    env.telegram.answer(500, {"ok": False, "error_code": 500, "description": "Internal Server Error"})
    triggered = await env.trigger(message_text="Counted")
    assert (await env.until(triggered["delivery_id"]))["status"] == "sent"
    after = await scrape(env.client)
    for outcome in ("pending", "sent"):  # a retry, then the send
        delta = value(after, "chatbots_delivery_attempts_total", outcome=outcome) - value(
            before, "chatbots_delivery_attempts_total", outcome=outcome)  # fmt: skip
        assert delta == 1, outcome


class WebhookReceiver(LoopbackServer):
    """An app's webhook endpoint on 127.0.0.1: records each POST's headers and raw body."""

    path = "/hook"

    def __init__(self) -> None:
        super().__init__()
        self.received: list[tuple[dict[str, str], bytes]] = []

    async def _handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        return web.Response(status=204)



async def test_the_api_platform_posts_a_signed_webhook_and_the_user_continues_the_conversation(
    env: Env, worker: DeliveryWorker
) -> None:
    receiver = await WebhookReceiver().start()
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    try:
        env.app.state.runtime.settings.webhook_allow_private = True  # a loopback receiver
        async with env.app.state.sessionmaker() as s:
            await create_channel(s, env.app.state.runtime.settings, env.world.chatbot.public_id, "api",
                                 config={"callback_url": receiver.url + "/hook", "signing_secret": secret})  # fmt: skip
            await s.commit()
        triggered = await env.trigger(platform="api", identifier=env.world.user.email,
                                      message_text="Your results are ready.")  # fmt: skip
        status = await env.until(triggered["delivery_id"])
        assert status["status"] == "sent", status
        [(headers, raw)] = receiver.received
        payload = Webhook(secret).verify(raw, headers)  # the Standard Webhooks library verifies it
        assert headers["webhook-id"] == triggered["delivery_id"]
        assert payload["type"] == "message" and payload["message"] == "Your results are ready."
        assert payload["session_id"] == triggered["session_id"]
        assert payload["chatbot"] == str(env.world.chatbot.public_id)
        # The user answers through incoming_message: the same session, and the bot sees its push.
        before = len(env.fake_llm.requests())
        reply = await env.client.post(env.world.url, json={"message": "Thanks!"}, headers=env.world.headers)
        assert reply.status_code == 200 and reply.json()["session_id"] == triggered["session_id"]
        [llm_request] = env.fake_llm.requests()[before:]
        assert {"role": "assistant", "content": "Your results are ready."} in llm_request["messages"]
    finally:
        await receiver.stop()


async def test_an_embedded_widget_message_is_stored_for_the_widget(env: Env, worker: DeliveryWorker) -> None:
    async with env.app.state.sessionmaker() as s:
        await create_channel(s, env.app.state.runtime.settings, env.world.chatbot.public_id,
                             "embedded_widget", config={"allowed_domains": "example.com"})  # fmt: skip
        await s.commit()
    triggered = await env.trigger(platform="embedded_widget", identifier="anon:1", message_text="Welcome back!")
    status = await env.until(triggered["delivery_id"])
    assert (status["status"], status["provider_message_id"]) == ("sent", None)
    assert await env.ai_messages(triggered["session_id"]) == ["Welcome back!"]
    assert env.telegram.requests == []


async def test_consent_withdrawn_after_a_connect_trigger_skips_it(env: Env) -> None:
    async with env.app.state.sessionmaker() as s:
        await create_channel(s, env.app.state.runtime.settings, env.world.chatbot.public_id, "commcare_connect",
                             config={"commcare_connect_bot_name": "Bot"})  # fmt: skip
        participant = Participant(team_id=env.world.team.id, platform="commcare_connect", identifier="cc-1")
        s.add(participant)
        await s.flush()
        s.add(ParticipantData(participant_id=participant.id, chatbot_id=env.world.chatbot.id, data={},
                              system_metadata={"consent": True}))  # fmt: skip
        await s.commit()
    triggered = await env.trigger(platform="commcare_connect", identifier="CC-1", message_text="Hi")
    async with env.app.state.sessionmaker() as s:
        await s.execute(update(ParticipantData).where(ParticipantData.participant_id == participant.id)
                        .values(system_metadata={"consent": False}))  # fmt: skip
        await s.commit()
    running = DeliveryWorker(env.app.state.runtime)
    task = asyncio.create_task(running.run())
    status = await env.until(triggered["delivery_id"])
    running.stop()
    await task
    assert (status["status"], status["last_error"]) == ("skipped", "The participant withdrew consent.")


async def test_a_send_slower_than_the_lease_keeps_its_claim(env: Env) -> None:
    """Two live workers and a provider slower than the lease: the claim is renewed while the
    send lasts, so the other worker never takes the delivery and it is sent once."""
    env.app.state.runtime.settings.delivery_lease_seconds = 0.6
    env.telegram.delay = 1.5
    triggered = await env.trigger(message_text="Slow but once")
    workers = [DeliveryWorker(env.app.state.runtime) for _ in range(2)]
    tasks = [asyncio.create_task(w.run()) for w in workers]
    status = await env.until(triggered["delivery_id"])
    await asyncio.sleep(0.8)  # more than a lease more, in case a second send were coming
    for w in workers:
        w.stop()
    await asyncio.gather(*tasks)
    assert (status["status"], status["attempts"]) == ("sent", 1)
    assert len(env.telegram.requests) == 1


async def test_a_message_is_written_once_even_by_two_workers(env: Env) -> None:
    """Two workers that both wrote the message (the first's lease lapsed mid-write): the second
    link finds the first and sends its text; one AI message is stored."""
    import dataclasses
    import random

    from app.channels import outbox
    from app.channels.base import SendContext
    from app.services.delivery import Deps, _write_once

    triggered = await env.trigger(message_text="First words")
    runtime = env.app.state.runtime
    [claimed] = await outbox.claim_due_deliveries(runtime.store, now=utcnow(), limit=1, lease_seconds=60)
    async with httpx.AsyncClient() as http:
        deps = Deps(runtime.store, runtime.llm, runtime.settings,
                    SendContext(http, runtime.settings), {}, random.Random(1))  # fmt: skip
        first = await _write_once(deps, claimed, None)
        second = await _write_once(deps, dataclasses.replace(claimed, message_text="Other words"), None)
    assert (first, second) == ("First words", "First words")
    assert await env.ai_messages(triggered["session_id"]) == ["First words"]
