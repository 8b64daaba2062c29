"""``POST /api/trigger_bot`` (SPEC §3.3) and ``GET /api/deliveries/{id}`` (SPEC §6) through the
ASGI app on the database under test: the rows a trigger writes (participant, its data, the
session and its state, the delivery), the platforms' special cases, bad input with nothing
written, authorization, ``Idempotency-Key``, and the OpenAPI document.

No delivery worker exists yet, so a trigger's delivery stays ``pending``: these tests look at
rows, never at sends. (The body's field rules alone are in test_trigger_request.py.)"""

import asyncio
import json
import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.models import (
    Channel,
    Chatbot,
    ChatSession,
    Delivery,
    Participant,
    ParticipantData,
    Role,
)
from app.services.admin_channels import create_channel
from tests.assertions import assert_error
from tests.factories import World, add_key, add_user, make_world

Db = async_sessionmaker[AsyncSession]

URL = "/api/trigger_bot"
CHATBOT_NOT_FOUND = {"detail": "No chatbot matches the given query."}
FORBIDDEN = {"detail": "You do not have permission to perform this action."}
NOT_PROVIDED = {"detail": "Authentication credentials were not provided."}
NO_CONSENT = {"detail": "User has not given consent"}
KEY_REUSED = {"detail": "This Idempotency-Key was already used with a different request."}
DELIVERY_NOT_FOUND = {"detail": "Delivery not found."}
PAGE_CONTEXT_MESSAGE = (
    "The 'page_context' key cannot be set directly in session_data; use the page_context field instead."
)
DELIVERY_FIELDS = {"id", "status", "platform", "session_id", "attempts", "last_error",
                   "provider_message_id", "created_at", "updated_at", "sent_at"}  # fmt: skip
PLATFORMS = ["telegram", "whatsapp", "facebook", "sureadhere", "slack", "commcare_connect", "email",
             "api", "web", "embedded_widget", "evaluations"]  # fmt: skip

# What create_channel needs for each platform used here (app/channels/config.py).
CHANNEL_CONFIGS: dict[str, dict[str, Any]] = {
    "telegram": {"bot_token": "123456:test-token"},
    "whatsapp": {"provider": "turnio", "auth_token": "turn-token"},
    "commcare_connect": {"commcare_connect_bot_name": "Test bot"},
    # A literal loopback address with webhook_allow_private: the SSRF check resolves it without
    # DNS (getaddrinfo of an IP literal), so the channel is made by the real create_channel.
    "api": {"callback_url": "http://127.0.0.1:9/webhook"},
    "embedded_widget": {"allowed_domains": "example.com"},
    "web": {},
    "evaluations": {},
}


# --- helpers ------------------------------------------------------------------------------------


async def add_channel(db: Db, settings: Settings, world: World, platform: str) -> Channel:
    """The world's chatbot's channel on ``platform``, made by the admin service."""
    channel_settings = settings.model_copy(update={"webhook_allow_private": True})
    async with db() as s:
        channel = await create_channel(
            s, channel_settings, world.chatbot.public_id, platform, config=CHANNEL_CONFIGS[platform]
        )
        await s.commit()
    return channel


def body_for(world: World, **fields: Any) -> dict[str, Any]:
    """A valid telegram trigger of the world's chatbot, with ``fields`` changed (None drops one)."""
    body: dict[str, Any] = {
        "identifier": "1001",
        "platform": "telegram",
        "experiment": str(world.chatbot.public_id),
        "prompt_text": "Remind them of tomorrow's appointment.",
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


async def trigger(client: httpx.AsyncClient, world: World, headers: dict[str, str] | None = None,
                  **fields: Any) -> httpx.Response:  # fmt: skip
    return await client.post(URL, json=body_for(world, **fields), headers=headers or world.headers)


async def trigger_ok(client: httpx.AsyncClient, world: World, **fields: Any) -> dict[str, str]:
    r = await trigger(client, world, **fields)
    assert r.status_code == 200, r.text
    return r.json()


async def counts(db: Db, world: World) -> dict[str, int]:
    """The rows a trigger may write, in the world's team."""
    team = world.team.id

    def count(model: Any, *where: Any) -> Any:
        return select(func.count()).select_from(model).where(*where)

    participants = select(Participant.id).where(Participant.team_id == team)
    async with db() as s:
        return {
            "participant": await s.scalar(count(Participant, Participant.team_id == team)),
            "participant_data": await s.scalar(
                count(ParticipantData, ParticipantData.participant_id.in_(participants))
            ),
            "chat_session": await s.scalar(count(ChatSession, ChatSession.team_id == team)),
            "delivery": await s.scalar(count(Delivery, Delivery.team_id == team)),
        }


async def assert_nothing_written(db: Db, world: World, before: dict[str, int]) -> None:
    assert await counts(db, world) == before


def assert_invalid(r: httpx.Response, errors: dict[str, list[str]]) -> None:
    assert r.status_code == 400, r.text
    assert r.json() == {"detail": "Invalid request body.", "errors": errors}


async def delivery_row(db: Db, delivery_id: str) -> Delivery:
    async with db() as s:
        row = await s.scalar(select(Delivery).where(Delivery.public_id == uuid.UUID(delivery_id)))
    assert row is not None, delivery_id
    return row


async def session_row(db: Db, session_id: str) -> ChatSession:
    async with db() as s:
        row = await s.scalar(select(ChatSession).where(ChatSession.external_id == session_id))
    assert row is not None, session_id
    return row


async def participants_of(db: Db, world: World, platform: str) -> list[Participant]:
    async with db() as s:
        return list((await s.scalars(select(Participant).where(
            Participant.team_id == world.team.id, Participant.platform == platform))).all())  # fmt: skip


async def participant_data(db: Db, participant_id: int, chatbot_id: int) -> ParticipantData | None:
    async with db() as s:
        return await s.scalar(select(ParticipantData).where(
            ParticipantData.participant_id == participant_id, ParticipantData.chatbot_id == chatbot_id))  # fmt: skip


async def add_member_key(db: Db, world: World, role: Role, read_only: bool = False) -> str:
    async with db() as s:
        user = await add_user(s, world.team, role)
        key = await add_key(s, world.team, user, read_only=read_only)
        await s.commit()
    return key


async def add_admin_read_only_key(db: Db, world: World) -> str:
    async with db() as s:
        key = await add_key(s, world.team, world.user, read_only=True)
        await s.commit()
    return key


async def _channel(db: Db, world: World, platform: str) -> Channel:
    async with db() as s:
        channel = await s.scalar(select(Channel).where(
            Channel.chatbot_id == world.chatbot.id, Channel.platform == platform, Channel.deleted.is_(False)))  # fmt: skip
    assert channel is not None
    return channel


async def _team_api_channel(db: Db, world: World) -> Channel:
    async with db() as s:
        channel = await s.scalar(select(Channel).where(
            Channel.team_id == world.team.id, Channel.chatbot_id.is_(None), Channel.platform == "api",
            Channel.deleted.is_(False)))  # fmt: skip
    assert channel is not None
    return channel


@pytest.fixture
async def tg(world, db, settings) -> World:  # type: ignore[no-untyped-def]
    """The world with a telegram channel on its chatbot: a valid trigger succeeds."""
    await add_channel(db, settings, world, "telegram")
    return world


@pytest.fixture
async def other_world(db, fake_llm, settings) -> World:  # type: ignore[no-untyped-def]
    """A second, unrelated team (with a telegram channel on its chatbot)."""
    other = await make_world(db, settings, api_base=fake_llm.base_url)
    await add_channel(db, settings, other, "telegram")
    return other


# --- the rows a trigger writes (SPEC §3.3 steps 6–9) --------------------------------------------


async def test_trigger_answers_200_with_session_channel_and_delivery(client, db, tg):
    r = await trigger(client, tg)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"session_id", "channel", "delivery_id"}
    assert body["channel"] == "telegram"
    uuid.UUID(body["session_id"])
    uuid.UUID(body["delivery_id"])


async def test_trigger_writes_a_pending_delivery_in_the_team(client, db, settings, tg):
    channel_id = (await _channel(db, tg, "telegram")).id
    body = await trigger_ok(client, tg, identifier="2002", prompt_text="Say hello to them.")
    delivery = await delivery_row(db, body["delivery_id"])
    chat = await session_row(db, body["session_id"])
    assert delivery.team_id == tg.team.id
    assert (delivery.status, delivery.attempts) == ("pending", 0)
    assert (delivery.platform, delivery.recipient) == ("telegram", "2002")
    assert (delivery.prompt_text, delivery.message_text) == ("Say hello to them.", None)
    assert delivery.channel_id == channel_id
    assert delivery.session_id == chat.id
    assert delivery.message_id is None  # the instruction is never stored as a message
    assert (delivery.last_error, delivery.provider_message_id, delivery.sent_at) == (None, None, None)


async def test_message_text_is_stored_on_the_delivery_as_given(client, db, tg):
    text = "  See you tomorrow at 10:00.\nBring your card.  "
    body = await trigger_ok(client, tg, prompt_text=None, message_text=text)
    delivery = await delivery_row(db, body["delivery_id"])
    assert (delivery.prompt_text, delivery.message_text) == (None, text)


async def test_trigger_creates_a_setup_session_on_the_chatbots_channel(client, db, tg):
    channel = await _channel(db, tg, "telegram")
    body = await trigger_ok(client, tg, identifier="3003")
    chat = await session_row(db, body["session_id"])
    [participant] = await participants_of(db, tg, "telegram")
    assert chat.status == "setup" and chat.ended_at is None
    assert (chat.team_id, chat.chatbot_id, chat.channel_id, chat.platform) == (
        tg.team.id, tg.chatbot.id, channel.id, "telegram")  # fmt: skip
    assert chat.participant_id == participant.id


async def test_trigger_creates_the_participant(client, db, tg):
    await trigger_ok(client, tg, identifier="4004")
    [participant] = await participants_of(db, tg, "telegram")
    assert (participant.team_id, participant.platform, participant.identifier) == (tg.team.id, "telegram", "4004")
    assert participant.user_id is None


async def test_participant_data_is_shallow_merged(client, db, tg):
    await trigger_ok(client, tg, identifier="5005", participant_data={"a": 1, "b": {"x": 1}})
    await trigger_ok(client, tg, identifier="5005", participant_data={"b": {"y": 2}})
    [participant] = await participants_of(db, tg, "telegram")
    data = await participant_data(db, participant.id, tg.chatbot.id)
    assert data is not None and data.data == {"a": 1, "b": {"y": 2}}


async def test_a_second_trigger_reuses_the_open_session(client, db, tg):
    first = await trigger_ok(client, tg, identifier="6006")
    second = await trigger_ok(client, tg, identifier="6006")
    assert second["session_id"] == first["session_id"]
    assert second["delivery_id"] != first["delivery_id"]
    assert await counts(db, tg) == {"participant": 1, "participant_data": 1, "chat_session": 1, "delivery": 2}


async def test_another_identifier_is_another_participant_and_session(client, db, tg):
    first = await trigger_ok(client, tg, identifier="7007")
    second = await trigger_ok(client, tg, identifier="7008")
    assert second["session_id"] != first["session_id"]
    assert {p.identifier for p in await participants_of(db, tg, "telegram")} == {"7007", "7008"}


async def test_start_new_session_ends_the_old_one_and_starts_another(client, db, tg):
    first = await trigger_ok(client, tg, identifier="8008")
    second = await trigger_ok(client, tg, identifier="8008", start_new_session=True)
    assert second["session_id"] != first["session_id"]
    old = await session_row(db, first["session_id"])
    new = await session_row(db, second["session_id"])
    assert old.status == "pending-review" and old.ended_at is not None
    assert new.status == "setup" and new.ended_at is None
    assert new.participant_id == old.participant_id
    assert (await delivery_row(db, second["delivery_id"])).session_id == new.id
    # The next trigger continues the new session.
    third = await trigger_ok(client, tg, identifier="8008")
    assert third["session_id"] == second["session_id"]


async def test_start_new_session_without_a_session_just_starts_one(client, db, tg):
    body = await trigger_ok(client, tg, identifier="8009", start_new_session=True)
    assert (await session_row(db, body["session_id"])).status == "setup"
    assert (await counts(db, tg))["chat_session"] == 1


async def test_session_data_is_shallow_merged_into_the_state(client, db, tg):
    first = await trigger_ok(client, tg, identifier="9009", session_data={"a": 1, "b": {"x": 1}})
    assert (await session_row(db, first["session_id"])).state == {"a": 1, "b": {"x": 1}}
    await trigger_ok(client, tg, identifier="9009", session_data={"b": {"y": 2}, "c": 3})
    assert (await session_row(db, first["session_id"])).state == {"a": 1, "b": {"y": 2}, "c": 3}


async def test_page_context_replaces_the_states_page_context(client, db, tg):
    first = await trigger_ok(client, tg, identifier="9010", session_data={"keep": True},
                             page_context={"url": "https://shop.example/a", "product_ids": [1, 2]})  # fmt: skip
    chat = await session_row(db, first["session_id"])
    assert chat.state == {"keep": True, "page_context": {"url": "https://shop.example/a", "product_ids": [1, 2]}}
    await trigger_ok(client, tg, identifier="9010", page_context={"url": "https://shop.example/b"})
    chat = await session_row(db, first["session_id"])
    assert chat.state == {"keep": True, "page_context": {"url": "https://shop.example/b"}}  # replaced, not merged
    await trigger_ok(client, tg, identifier="9010", session_data={"more": 1})  # no page_context: kept
    chat = await session_row(db, first["session_id"])
    assert chat.state == {"keep": True, "more": 1, "page_context": {"url": "https://shop.example/b"}}


async def test_chatbot_admin_may_trigger(client, db, tg):
    key = await add_member_key(db, tg, Role.chatbot_admin)
    r = await trigger(client, tg, headers={"X-api-key": key})
    assert r.status_code == 200, r.text


async def test_unknown_body_fields_are_ignored(client, db, tg):
    r = await client.post(URL, json={**body_for(tg), "colour": "blue"}, headers=tg.headers)
    assert r.status_code == 200, r.text


async def test_trailing_slash_is_the_same_endpoint(client, db, tg):
    r = await client.post(URL + "/", json=body_for(tg), headers=tg.headers)
    assert r.status_code == 200, r.text
    assert (await counts(db, tg))["delivery"] == 1


# --- platform api: the conversation incoming_message continues (SPEC §6) ------------------------


async def test_api_trigger_session_is_the_one_incoming_message_continues(client, db, settings, world):
    bot_channel = await add_channel(db, settings, world, "api")
    triggered = await trigger_ok(client, world, platform="api", identifier=world.user.email)
    chat = await session_row(db, triggered["session_id"])
    team_channel = await _team_api_channel(db, world)
    assert chat.channel_id == team_channel.id != bot_channel.id
    assert (chat.platform, chat.chatbot_id) == ("api", world.chatbot.id)
    delivery = await delivery_row(db, triggered["delivery_id"])
    assert delivery.channel_id == bot_channel.id  # pushed to the chatbot's own api channel
    assert delivery.recipient == world.user.email

    r = await client.post(world.url, json={"message": "Hi, what did you want to tell me?"}, headers=world.headers)
    assert r.status_code == 200, r.text
    assert r.json()["session_id"] == triggered["session_id"]
    [participant] = await participants_of(db, world, "api")
    assert participant.identifier == world.user.email and chat.participant_id == participant.id


async def test_the_api_participant_a_trigger_made_is_linked_to_the_user_when_they_chat(client, db, settings, world):
    """SPEC §3.2 step 4: for a user credential the participant is the user (platform api, the
    user's email, linked to the user), even when a trigger made the participant row first."""
    await add_channel(db, settings, world, "api")
    await trigger_ok(client, world, platform="api", identifier=world.user.email)
    r = await client.post(world.url, json={"message": "hello"}, headers=world.headers)
    assert r.status_code == 200, r.text
    [participant] = await participants_of(db, world, "api")
    assert participant.user_id == world.user.id


async def test_api_trigger_continues_the_session_incoming_message_started(client, db, settings, world):
    await add_channel(db, settings, world, "api")
    r = await client.post(world.url, json={"message": "hello"}, headers=world.headers)
    assert r.status_code == 200, r.text
    triggered = await trigger_ok(client, world, platform="api", identifier=world.user.email)
    assert triggered["session_id"] == r.json()["session_id"]
    assert triggered["channel"] == "api"
    assert (await counts(db, world))["chat_session"] == 1


async def test_embedded_widget_can_be_triggered(client, db, settings, world):
    """SPEC §3.3 step 4: api and embedded_widget channels can push in this project."""
    channel = await add_channel(db, settings, world, "embedded_widget")
    body = await trigger_ok(client, world, platform="embedded_widget", identifier="anon:visitor-1")
    assert body["channel"] == "embedded_widget"
    assert (await delivery_row(db, body["delivery_id"])).channel_id == channel.id
    assert (await session_row(db, body["session_id"])).channel_id == channel.id


async def test_concurrent_triggers_for_a_new_participant_share_one_session(client, db, tg):
    responses = await asyncio.gather(
        *(trigger(client, tg, identifier="7777", session_data={f"k{i}": i}) for i in range(5))
    )
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert len({r.json()["session_id"] for r in responses}) == 1
    assert len({r.json()["delivery_id"] for r in responses}) == 5
    assert await counts(db, tg) == {"participant": 1, "participant_data": 1, "chat_session": 1, "delivery": 5}
    chat = await session_row(db, responses[0].json()["session_id"])
    assert chat.state == {f"k{i}": i for i in range(5)}  # no merge lost another's keys


# --- whatsapp: E.164 identifiers ---------------------------------------------------------------


async def test_whatsapp_numbers_are_normalised_to_one_participant(client, db, settings, world):
    await add_channel(db, settings, world, "whatsapp")
    first = await trigger_ok(client, world, platform="whatsapp", identifier="+27 82 123 4567")
    second = await trigger_ok(client, world, platform="whatsapp", identifier="27821234567")
    [participant] = await participants_of(db, world, "whatsapp")
    assert participant.identifier == "+27821234567"
    assert first["session_id"] == second["session_id"]
    for body in (first, second):
        assert (await delivery_row(db, body["delivery_id"])).recipient == "+27821234567"


@pytest.mark.parametrize("number", ["12345", "+27 82 ABC 4567", "0821234567", "not a number"])
async def test_unparseable_whatsapp_number_is_400_and_nothing_is_written(client, db, settings, world, number):
    await add_channel(db, settings, world, "whatsapp")
    before = await counts(db, world)
    r = await trigger(client, world, platform="whatsapp", identifier=number)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["detail"] == "Invalid request body." and set(body["errors"]) == {"identifier"}, body
    [message] = body["errors"]["identifier"]
    assert repr(number) in message and "phone number" in message, message
    await assert_nothing_written(db, world, before)


# --- commcare_connect: lower-cased ids and consent ---------------------------------------------


async def test_commcare_connect_without_consent_is_400_but_keeps_participant_data(client, db, settings, world):
    await add_channel(db, settings, world, "commcare_connect")
    r = await trigger(client, world, platform="commcare_connect", identifier="Worker-ABC",
                      participant_data={"name": "Ada"})  # fmt: skip
    assert_error(r, 400, NO_CONSENT)
    [participant] = await participants_of(db, world, "commcare_connect")
    assert participant.identifier == "worker-abc"
    data = await participant_data(db, participant.id, world.chatbot.id)
    assert data is not None and data.data == {"name": "Ada"}
    assert (await counts(db, world)) == {"participant": 1, "participant_data": 1, "chat_session": 0, "delivery": 0}


async def test_commcare_connect_consent_false_is_not_consent(client, db, settings, world):
    await add_channel(db, settings, world, "commcare_connect")
    await _participant_with_metadata(db, world, "worker-no", {"consent": False})
    r = await trigger(client, world, platform="commcare_connect", identifier="worker-no")
    assert_error(r, 400, NO_CONSENT)
    assert (await counts(db, world))["delivery"] == 0


async def test_commcare_connect_with_consent_is_200_with_a_lower_cased_id(client, db, settings, world):
    await add_channel(db, settings, world, "commcare_connect")
    await _participant_with_metadata(db, world, "worker-xyz", {"consent": True})
    body = await trigger_ok(client, world, platform="commcare_connect", identifier="WORKER-Xyz",
                            participant_data={"visit": 2})  # fmt: skip
    assert body["channel"] == "commcare_connect"
    [participant] = await participants_of(db, world, "commcare_connect")
    assert participant.identifier == "worker-xyz"
    delivery = await delivery_row(db, body["delivery_id"])
    assert (delivery.recipient, delivery.status) == ("worker-xyz", "pending")
    assert (await session_row(db, body["session_id"])).participant_id == participant.id
    data = await participant_data(db, participant.id, world.chatbot.id)
    assert data is not None and data.data == {"visit": 2} and data.system_metadata == {"consent": True}


async def test_commcare_connect_consent_given_after_a_refusal(client, db, settings, world):
    await add_channel(db, settings, world, "commcare_connect")
    r = await trigger(client, world, platform="commcare_connect", identifier="late@connect.example")
    assert_error(r, 400, NO_CONSENT)
    [participant] = await participants_of(db, world, "commcare_connect")
    async with db() as s:
        await s.execute(update(ParticipantData).where(ParticipantData.participant_id == participant.id)
                        .values(system_metadata={"consent": True}))  # fmt: skip
        await s.commit()
    await trigger_ok(client, world, platform="commcare_connect", identifier="LATE@connect.example")
    assert (await counts(db, world)) == {"participant": 1, "participant_data": 1, "chat_session": 1, "delivery": 1}


async def _participant_with_metadata(db: Db, world: World, identifier: str, metadata: dict[str, Any]) -> None:
    async with db() as s:
        participant = Participant(team_id=world.team.id, platform="commcare_connect", identifier=identifier)
        s.add(participant)
        await s.flush()
        s.add(ParticipantData(participant_id=participant.id, chatbot_id=world.chatbot.id, data={},
                              system_metadata=metadata))  # fmt: skip
        await s.commit()


# --- bad input: the exact 400 and nothing written (SPEC §3.1, §3.3 step 2) ----------------------

REQUIRED = ["This field is required."]
BLANK = ["This field may not be blank."]
PLATFORM_CHOICES = ("Input should be 'telegram', 'whatsapp', 'facebook', 'sureadhere', 'slack', "
                    "'commcare_connect', 'email', 'api', 'web', 'embedded_widget' or 'evaluations'")  # fmt: skip


@pytest.mark.parametrize(
    ("change", "errors"),
    [
        ({"identifier": None}, {"identifier": REQUIRED}),
        ({"platform": None}, {"platform": REQUIRED}),
        ({"experiment": None}, {"experiment": REQUIRED}),
        ({"prompt_text": None}, {"prompt_text": ["This field is required (or message_text)."]}),
        ({"identifier": ""}, {"identifier": BLANK}),
        ({"identifier": "   "}, {"identifier": BLANK}),
        ({"prompt_text": ""}, {"prompt_text": BLANK}),
        ({"prompt_text": " \n\t"}, {"prompt_text": BLANK}),
        ({"prompt_text": None, "message_text": ""}, {"message_text": BLANK}),
        ({"prompt_text": None, "message_text": "  "}, {"message_text": BLANK}),
        ({"start_new_session": "yes"}, {"start_new_session": ["Must be a valid boolean."]}),
        ({"start_new_session": 1}, {"start_new_session": ["Must be a valid boolean."]}),
        ({"session_data": []}, {"session_data": ["Must be an object."]}),
        ({"participant_data": "x"}, {"participant_data": ["Must be an object."]}),
        ({"page_context": "https://example.com"}, {"page_context": ["Must be an object."]}),
        ({"identifier": 5}, {"identifier": ["Not a valid string."]}),
        ({"prompt_text": 5}, {"prompt_text": ["Not a valid string."]}),
        ({"identifier": "9" * 321}, {"identifier": ["Ensure this field has no more than 320 characters."]}),
        ({"prompt_text": "x" * 32_001}, {"prompt_text": ["Ensure this field has no more than 32000 characters."]}),
        ({"prompt_text": None, "message_text": "x" * 32_001},
         {"message_text": ["Ensure this field has no more than 32000 characters."]}),
        ({"platform": "pigeon"}, {"platform": [PLATFORM_CHOICES]}),
        ({"platform": "Telegram"}, {"platform": [PLATFORM_CHOICES]}),
        ({"experiment": "not-a-uuid"}, {"experiment": ["Must be a valid UUID."]}),
        ({"message_text": "See you."}, {"non_field_errors": ["Give exactly one of prompt_text and message_text."]}),
        ({"session_data": {"page_context": {"url": "https://example.com"}}}, {"session_data": [PAGE_CONTEXT_MESSAGE]}),
    ],
)  # fmt: skip
async def test_bad_field_is_400_and_nothing_is_written(client, db, tg, change, errors):
    before = await counts(db, tg)
    r = await trigger(client, tg, **change)
    assert_invalid(r, errors)
    await assert_nothing_written(db, tg, before)


async def test_identifier_of_320_characters_is_accepted(client, db, tg):
    body = await trigger_ok(client, tg, identifier="9" * 320)
    assert (await delivery_row(db, body["delivery_id"])).recipient == "9" * 320


async def test_prompt_text_of_32000_characters_is_accepted(client, db, tg):
    await trigger_ok(client, tg, prompt_text="x" * 32_000)


async def test_empty_object_reports_every_missing_required_field(client, db, tg):
    before = await counts(db, tg)
    r = await client.post(URL, json={}, headers=tg.headers)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["detail"] == "Invalid request body."
    for field in ("identifier", "platform", "experiment"):
        assert body["errors"].get(field) == REQUIRED, body
    await assert_nothing_written(db, tg, before)


@pytest.mark.parametrize("raw", ["[]", '"hi"', "5", "null"])
async def test_body_that_is_not_an_object_is_400(client, db, tg, raw):
    before = await counts(db, tg)
    r = await client.post(URL, content=raw, headers={**tg.headers, "Content-Type": "application/json"})
    assert_invalid(r, {"non_field_errors": ["Invalid data. Expected a JSON object."]})
    await assert_nothing_written(db, tg, before)


@pytest.mark.parametrize("raw", [b'{"identifier": "1"', b"{identifier: 1}", b"not json", b'{"a": 1,}'])
async def test_malformed_json_is_400(client, db, tg, raw):
    before = await counts(db, tg)
    r = await client.post(URL, content=raw, headers={**tg.headers, "Content-Type": "application/json"})
    assert_error(r, 400)
    assert r.json()["detail"].startswith("JSON parse error - "), r.json()
    await assert_nothing_written(db, tg, before)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_non_json_content_type_is_415(client, db, tg, content_type):
    before = await counts(db, tg)
    headers = dict(tg.headers)
    if content_type is not None:
        headers["Content-Type"] = content_type
    r = await client.post(URL, content=json.dumps(body_for(tg)), headers=headers)
    assert_error(r, 415)
    await assert_nothing_written(db, tg, before)


async def test_body_over_the_size_limit_is_413(client, db, tg):
    before = await counts(db, tg)
    r = await trigger(client, tg, participant_data={"blob": "x" * 1_100_000})  # 1.1 MB > 1 MiB
    assert_error(r, 413, {"detail": "Request body is too large."})
    await assert_nothing_written(db, tg, before)


async def test_wrong_method_is_405_json_with_allow(client, tg):
    r = await client.get(URL, headers=tg.headers)
    assert_error(r, 405)
    assert "POST" in r.headers["allow"]


async def test_null_character_is_400(client, db, tg):
    before = await counts(db, tg)
    r = await trigger(client, tg, prompt_text="hello\x00there")
    assert_invalid(r, {"prompt_text": ["Null characters are not allowed."]})
    await assert_nothing_written(db, tg, before)


@pytest.mark.parametrize("field", ["participant_data", "session_data", "page_context"])
async def test_null_character_in_an_object_key_is_400(client, db, tg, field):
    """SPEC §3.1: no 500 for bad input. PostgreSQL cannot store NUL in JSON keys any more than
    in values, so a NUL key is refused like a NUL value."""
    before = await counts(db, tg)
    r = await trigger(client, tg, **{field: {"a\x00b": 1}})
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["detail"] == "Invalid request body.", body
    assert [k for k in body["errors"] if k.split(".")[0] == field], body
    assert ["Null characters are not allowed."] in body["errors"].values(), body
    await assert_nothing_written(db, tg, before)


# --- the chatbot and its channel (SPEC §3.3 steps 3–4) ------------------------------------------


async def test_unknown_chatbot_is_404(client, db, tg):
    before = await counts(db, tg)
    r = await trigger(client, tg, experiment=str(uuid.uuid4()))
    assert_error(r, 404, CHATBOT_NOT_FOUND)
    await assert_nothing_written(db, tg, before)


async def test_another_teams_chatbot_is_404(client, db, tg, other_world):
    before, other_before = await counts(db, tg), await counts(db, other_world)
    r = await trigger(client, tg, experiment=str(other_world.chatbot.public_id))
    assert_error(r, 404, CHATBOT_NOT_FOUND)
    await assert_nothing_written(db, tg, before)
    await assert_nothing_written(db, other_world, other_before)


async def test_archived_chatbot_is_404(client, db, tg):
    async with db() as s:
        await s.execute(update(Chatbot).where(Chatbot.id == tg.chatbot.id).values(is_archived=True))
        await s.commit()
    before = await counts(db, tg)
    r = await trigger(client, tg)
    assert_error(r, 404, CHATBOT_NOT_FOUND)
    await assert_nothing_written(db, tg, before)


async def test_a_published_versions_id_is_not_a_chatbot_id(client, db, tg):
    async with db() as s:
        version_id = await s.scalar(select(Chatbot.public_id).where(Chatbot.working_version_id == tg.chatbot.id))
    before = await counts(db, tg)
    r = await trigger(client, tg, experiment=str(version_id))
    assert_error(r, 404, CHATBOT_NOT_FOUND)
    await assert_nothing_written(db, tg, before)


async def test_no_channel_on_the_platform_is_400(client, db, world):
    before = await counts(db, world)
    r = await trigger(client, world)
    assert_error(r, 400, {"detail": "Chatbot cannot send messages on the telegram channel. Create the channel first."})
    await assert_nothing_written(db, world, before)


async def test_a_channel_on_another_platform_does_not_count(client, db, settings, world):
    await add_channel(db, settings, world, "whatsapp")
    before = await counts(db, world)
    r = await trigger(client, world)
    assert_error(r, 400, {"detail": "Chatbot cannot send messages on the telegram channel. Create the channel first."})
    await assert_nothing_written(db, world, before)


async def test_a_deleted_channel_is_no_channel(client, db, tg):
    async with db() as s:
        await s.execute(update(Channel).where(Channel.chatbot_id == tg.chatbot.id).values(deleted=True))
        await s.commit()
    before = await counts(db, tg)
    r = await trigger(client, tg)
    assert_error(r, 400, {"detail": "Chatbot cannot send messages on the telegram channel. Create the channel first."})
    await assert_nothing_written(db, tg, before)


@pytest.mark.parametrize("platform", ["web", "evaluations"])
async def test_platforms_that_cannot_push_are_400_even_with_a_channel(client, db, settings, world, platform):
    await add_channel(db, settings, world, platform)
    before = await counts(db, world)
    r = await trigger(client, world, platform=platform)
    assert_error(r, 400, {"detail": f"Chatbot cannot send messages on the {platform} channel. Create the channel first."})
    await assert_nothing_written(db, world, before)


async def test_disabled_channel_is_400(client, db, tg):
    async with db() as s:
        await s.execute(update(Channel).where(Channel.chatbot_id == tg.chatbot.id).values(enabled=False))
        await s.commit()
    before = await counts(db, tg)
    r = await trigger(client, tg)
    assert_error(r, 400, {"detail": "The telegram channel for this chatbot is disabled."})
    await assert_nothing_written(db, tg, before)


async def test_the_team_api_channel_is_not_the_chatbots_api_channel(client, db, world):
    """The team's API channel (chatbot NULL, made by incoming_message) does not let the chatbot
    push on api: the chatbot needs its own api channel."""
    r = await client.post(world.url, json={"message": "hello"}, headers=world.headers)
    assert r.status_code == 200, r.text
    await _team_api_channel(db, world)
    before = await counts(db, world)
    r = await trigger(client, world, platform="api", identifier=world.user.email)
    assert_error(r, 400, {"detail": "Chatbot cannot send messages on the api channel. Create the channel first."})
    await assert_nothing_written(db, world, before)


# --- authentication and authorization (SPEC §3.3 step 1, §4) ------------------------------------


async def test_no_credential_is_401(client, db, tg):
    before = await counts(db, tg)
    r = await client.post(URL, json=body_for(tg))
    assert_error(r, 401, NOT_PROVIDED)
    assert r.headers["www-authenticate"] == 'Bearer realm="api"'
    await assert_nothing_written(db, tg, before)


async def test_no_credential_with_an_invalid_body_is_still_401(client, db, tg):
    r = await client.post(URL, json={"identifier": 5})
    assert_error(r, 401, NOT_PROVIDED)


async def test_unknown_key_is_401(client, db, tg):
    r = await trigger(client, tg, headers={"X-api-key": "abcdefgh.not-a-real-key-0123456789abcdefghij"})
    assert_error(r, 401, {"detail": "Invalid token."})


async def test_read_only_key_is_403(client, db, tg):
    key = await add_admin_read_only_key(db, tg)
    before = await counts(db, tg)
    r = await trigger(client, tg, headers={"X-api-key": key})
    assert_error(r, 403, FORBIDDEN)
    await assert_nothing_written(db, tg, before)


async def test_member_write_key_is_403(client, db, tg):
    key = await add_member_key(db, tg, Role.member)
    before = await counts(db, tg)
    r = await trigger(client, tg, headers={"X-api-key": key})
    assert_error(r, 403, FORBIDDEN)
    await assert_nothing_written(db, tg, before)


@pytest.mark.parametrize(
    "content",
    [json.dumps({"identifier": 5, "platform": "pigeon"}), "{not json", json.dumps({})],
)
async def test_authorization_comes_before_body_validation(client, db, tg, content):
    member = await add_member_key(db, tg, Role.member)
    read_only = await add_admin_read_only_key(db, tg)
    for key in (member, read_only):
        r = await client.post(URL, content=content, headers={"X-api-key": key, "Content-Type": "application/json"})
        assert_error(r, 403, FORBIDDEN)
    r = await client.post(URL, content=content, headers={"Content-Type": "application/json"})
    assert_error(r, 401, NOT_PROVIDED)


async def test_member_with_a_non_json_body_is_403(client, db, tg):
    member = await add_member_key(db, tg, Role.member)
    r = await client.post(URL, content="hello", headers={"X-api-key": member, "Content-Type": "text/plain"})
    assert_error(r, 403, FORBIDDEN)


# --- Idempotency-Key ----------------------------------------------------------------------------


async def test_same_key_and_body_twice_answers_the_same_with_one_delivery(client, db, tg):
    headers = {**tg.headers, "Idempotency-Key": "trigger-1"}
    body = body_for(tg, identifier="1111", participant_data={"n": 1}, session_data={"s": 1})
    first = await client.post(URL, json=body, headers=headers)
    second = await client.post(URL, json=body, headers=headers)
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert second.json() == first.json()
    assert await counts(db, tg) == {"participant": 1, "participant_data": 1, "chat_session": 1, "delivery": 1}


async def test_same_key_with_another_body_is_400(client, db, tg):
    headers = {**tg.headers, "Idempotency-Key": "trigger-2"}
    first = await client.post(URL, json=body_for(tg, identifier="2222"), headers=headers)
    assert first.status_code == 200, first.text
    before = await counts(db, tg)
    r = await client.post(URL, json=body_for(tg, identifier="2222", prompt_text="Something else."),
                          headers=headers)  # fmt: skip
    assert_error(r, 400, KEY_REUSED)
    await assert_nothing_written(db, tg, before)


async def test_another_key_makes_another_delivery(client, db, tg):
    body = body_for(tg, identifier="3333")
    first = await client.post(URL, json=body, headers={**tg.headers, "Idempotency-Key": "trigger-3a"})
    second = await client.post(URL, json=body, headers={**tg.headers, "Idempotency-Key": "trigger-3b"})
    assert first.status_code == second.status_code == 200
    assert first.json()["delivery_id"] != second.json()["delivery_id"]
    assert (await counts(db, tg))["delivery"] == 2


async def test_the_same_key_of_another_credential_is_another_request(client, db, tg):
    async with db() as s:
        other_key = await add_key(s, tg.team, tg.user)
        await s.commit()
    body = body_for(tg, identifier="4444")
    first = await client.post(URL, json=body, headers={**tg.headers, "Idempotency-Key": "shared"})
    second = await client.post(URL, json=body, headers={"X-api-key": other_key, "Idempotency-Key": "shared"})
    assert first.status_code == second.status_code == 200
    assert first.json()["delivery_id"] != second.json()["delivery_id"]


async def test_too_long_idempotency_key_is_400_and_nothing_is_written(client, db, tg):
    before = await counts(db, tg)
    r = await trigger(client, tg, headers={**tg.headers, "Idempotency-Key": "k" * 256})
    assert_error(r, 400, {"detail": "Idempotency-Key must be 1 to 255 characters."})
    await assert_nothing_written(db, tg, before)


async def test_too_long_idempotency_key_is_refused_before_the_chatbot_lookup(client, db, world):
    """SPEC §3.3 step 2: the request is validated before any lookup."""
    r = await trigger(client, world, headers={**world.headers, "Idempotency-Key": "k" * 256},
                      experiment=str(uuid.uuid4()))  # fmt: skip
    assert_error(r, 400, {"detail": "Idempotency-Key must be 1 to 255 characters."})


@pytest.mark.parametrize("n", [2, 5])
async def test_concurrent_requests_with_one_key_make_one_delivery(client, db, tg, n):
    headers = {**tg.headers, "Idempotency-Key": f"concurrent-{n}"}
    body = body_for(tg, identifier="5555")
    responses = await asyncio.gather(*(client.post(URL, json=body, headers=headers) for _ in range(n)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert len({r.json()["delivery_id"] for r in responses}) == 1
    assert len({r.json()["session_id"] for r in responses}) == 1
    assert (await counts(db, tg))["delivery"] == 1


# --- GET /api/deliveries/{id} -------------------------------------------------------------------


async def test_delivery_status_has_its_fields(client, db, tg):
    triggered = await trigger_ok(client, tg, identifier="6666")
    r = await client.get(f"/api/deliveries/{triggered['delivery_id']}", headers=tg.headers)
    assert r.status_code == 200, r.text
    status = r.json()
    assert set(status) == DELIVERY_FIELDS
    assert status["id"] == triggered["delivery_id"]
    assert status["session_id"] == triggered["session_id"]
    assert (status["status"], status["platform"], status["attempts"]) == ("pending", "telegram", 0)
    assert (status["last_error"], status["provider_message_id"], status["sent_at"]) == (None, None, None)
    row = await delivery_row(db, triggered["delivery_id"])
    for field in ("created_at", "updated_at"):
        value = datetime.fromisoformat(status[field])
        assert value.replace(tzinfo=None) == getattr(row, field).replace(tzinfo=None), (field, status[field])


async def test_another_teams_delivery_is_404(client, db, tg, other_world):
    theirs = await trigger_ok(client, other_world)
    r = await client.get(f"/api/deliveries/{theirs['delivery_id']}", headers=tg.headers)
    assert_error(r, 404, DELIVERY_NOT_FOUND)
    # ... while its own team sees it.
    r = await client.get(f"/api/deliveries/{theirs['delivery_id']}", headers=other_world.headers)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("delivery_id", ["not-a-uuid", "12", "00000000-0000-0000-0000-00000000000g"])
async def test_malformed_delivery_id_is_404(client, tg, delivery_id):
    r = await client.get(f"/api/deliveries/{delivery_id}", headers=tg.headers)
    assert_error(r, 404, DELIVERY_NOT_FOUND)


async def test_unknown_delivery_id_is_404(client, tg):
    r = await client.get(f"/api/deliveries/{uuid.uuid4()}", headers=tg.headers)
    assert_error(r, 404, DELIVERY_NOT_FOUND)


async def test_read_only_key_of_an_admin_may_read_a_delivery(client, db, tg):
    triggered = await trigger_ok(client, tg)
    key = await add_admin_read_only_key(db, tg)
    r = await client.get(f"/api/deliveries/{triggered['delivery_id']}", headers={"X-api-key": key})
    assert r.status_code == 200, r.text
    assert r.json()["id"] == triggered["delivery_id"]


async def test_member_may_not_read_a_delivery(client, db, tg):
    triggered = await trigger_ok(client, tg)
    for read_only in (False, True):
        key = await add_member_key(db, tg, Role.member, read_only=read_only)
        r = await client.get(f"/api/deliveries/{triggered['delivery_id']}", headers={"X-api-key": key})
        assert_error(r, 403, FORBIDDEN)


async def test_delivery_status_without_credential_is_401(client, tg):
    triggered = await trigger_ok(client, tg)
    r = await client.get(f"/api/deliveries/{triggered['delivery_id']}")
    assert_error(r, 401, NOT_PROVIDED)


# --- the OpenAPI document ----------------------------------------------------------------------


async def test_openapi_declares_trigger_bot(client):
    doc = (await client.get("/openapi.json")).json()
    operation = doc["paths"]["/api/trigger_bot"]["post"]
    assert operation["summary"] == "Trigger the bot to send a message to the user"
    assert operation["tags"] == ["Channels"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/TriggerBotMessageRequest"}
    request = doc["components"]["schemas"]["TriggerBotMessageRequest"]
    assert set(request["properties"]) == {"identifier", "platform", "experiment", "prompt_text", "message_text",
                                          "start_new_session", "session_data", "page_context", "participant_data"}
    assert set(request["required"]) == {"identifier", "platform", "experiment"}
    assert "/api/trigger_bot/" not in doc["paths"]
    assert "get" in doc["paths"]["/api/deliveries/{delivery_id}"]


def _refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["$ref"]] if isinstance(value.get("$ref"), str) else []
        return found + [r for v in value.values() for r in _refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    return []


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


async def test_openapi_trigger_bot_platform_lists_the_platforms(client):
    """The request schema's ``platform`` resolves (every ``$ref`` names a schema that exists in
    the document) to the eleven platforms: Swagger UI shows them as the choices."""
    doc = (await client.get("/openapi.json")).json()
    request = doc["components"]["schemas"]["TriggerBotMessageRequest"]
    dangling = sorted({ref for ref in _refs(request) if _resolve(doc, ref) is None})
    assert dangling == [], dangling
    platform = request["properties"]["platform"]
    if "$ref" in platform:
        platform = _resolve(doc, platform["$ref"])
    assert platform["enum"] == PLATFORMS
