"""Bad input to incoming_message (SPEC §3.1, §3.2, §2.1): the exact status and body, and nothing
written. Also the version-resolution happy paths (which version answers, read from the stored
AI message's label)."""

import json
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import Chatbot, ChatMessage, ChatSession, MessageRole, Role
from app.services.chatbots import publish_version
from tests.assertions import assert_error, nothing_written, row_counts
from tests.factories import World, add_key, add_user, make_world

Db = async_sessionmaker[AsyncSession]

NOT_PROVIDED = {"detail": "Authentication credentials were not provided."}
CHATBOT_NOT_FOUND = {"detail": "No chatbot matches the given query."}
SESSION_NOT_FOUND = {"detail": "Session not found."}
JSON = {"Content-Type": "application/json"}


# --- helpers ------------------------------------------------------------------------------------


def assert_invalid_body(r: httpx.Response, *fields: str) -> None:
    """400 ``{"detail": "Invalid request body.", "errors": {field: [msg, ...]}}``; ``fields`` are
    exactly the keys of ``errors`` (any keys, but at least one, when none are given)."""
    assert r.status_code == 400, r.text
    body = r.json()
    assert set(body) == {"detail", "errors"}, body
    assert body["detail"] == "Invalid request body."
    errors = body["errors"]
    assert isinstance(errors, dict) and errors, body
    if fields:
        assert set(errors) == set(fields), body
    for messages in errors.values():
        assert isinstance(messages, list) and messages, body
        assert all(isinstance(m, str) and m for m in messages), body


async def post_raw(
    client: httpx.AsyncClient,
    url: str,
    content: bytes | str,
    headers: dict[str, str],
    content_type: str | None = "application/json",
) -> httpx.Response:
    sent = dict(headers)
    if content_type is not None:
        sent["Content-Type"] = content_type
    return await client.post(url, content=content, headers=sent)


async def start_session(client: httpx.AsyncClient, url: str, key: str) -> str:
    r = await client.post(url, json={"message": f"hello {uuid.uuid4()}"}, headers={"X-api-key": key})
    assert r.status_code == 200, r.text
    return str(r.json()["session_id"])


async def add_member_key(db: Db, world: World, role: Role = Role.member) -> str:
    async with db() as s:
        user = await add_user(s, world.team, role)
        key = await add_key(s, world.team, user, read_only=False)
        await s.commit()
    return key


async def add_chatbot(db: Db, world: World) -> Chatbot:
    """A second published chatbot in the world's team."""
    async with db() as s:
        bot = Chatbot(
            team_id=world.team.id, name="Other bot", llm_provider_id=world.provider.id,
            llm_model="fake-model", system_prompt="You are the other bot.",
        )  # fmt: skip
        s.add(bot)
        await s.flush()
        await publish_version(s, bot)
        await s.commit()
    return bot


def chatbot_url(public_id: object, version: object = None) -> str:
    middle = "" if version is None else f"/v{version}"
    return f"/channels/api/{public_id}{middle}/incoming_message"


async def ai_message(db: Db, session_id: str) -> ChatMessage:
    async with db() as s:
        message = await s.scalar(
            select(ChatMessage)
            .join(ChatSession, ChatSession.id == ChatMessage.session_id)
            .where(ChatSession.external_id == session_id, ChatMessage.role == MessageRole.ai)
            .order_by(ChatMessage.id.desc())
            .limit(1)
        )
    assert message is not None
    return message


@pytest.fixture
async def other_world(db, fake_llm, settings) -> World:  # type: ignore[no-untyped-def]
    """A second, unrelated team with its own admin, key and chatbot."""
    return await make_world(db, settings, api_base=fake_llm.base_url)


# --- body validation (SPEC §3.1, §3.2 step 2) -------------------------------------------------------


@pytest.mark.parametrize("body", [{}, {"msg": "hi"}, {"session": None}, {"message_text": "hi"}])
async def test_missing_message_is_400(client, db, world, body):
    async with nothing_written(db, world):
        r = await client.post(world.url, json=body, headers=world.headers)
    assert_invalid_body(r, "message")


@pytest.mark.parametrize("message", ["", "   ", "\n\t "])
async def test_blank_message_is_400(client, db, world, message):
    async with nothing_written(db, world):
        r = await client.post(world.url, json={"message": message}, headers=world.headers)
    assert_invalid_body(r, "message")


@pytest.mark.parametrize("message", [5, None, ["x"], {"a": 1}, True, 1.5])
async def test_non_string_message_is_400(client, db, world, message):
    async with nothing_written(db, world):
        r = await client.post(world.url, json={"message": message}, headers=world.headers)
    assert_invalid_body(r, "message")


@pytest.mark.parametrize("session", [5, True, ["x"], {"id": "x"}])
async def test_non_string_session_is_400(client, db, world, session):
    async with nothing_written(db, world):
        r = await client.post(world.url, json={"message": "hi", "session": session}, headers=world.headers)
    assert_invalid_body(r, "session")


async def test_every_invalid_field_is_reported(client, db, world):
    async with nothing_written(db, world):
        r = await client.post(world.url, json={"message": 5, "session": 5}, headers=world.headers)
    assert_invalid_body(r, "message", "session")


@pytest.mark.parametrize("raw", ["[]", '"hi"', "5", "null", "true", '[{"message": "hi"}]'])
async def test_body_that_is_not_an_object_is_400(client, db, world, raw):
    async with nothing_written(db, world):
        r = await post_raw(client, world.url, raw, world.headers)
    assert_invalid_body(r)


@pytest.mark.parametrize(
    ("content_type", "content"),
    [
        ("text/plain", '{"message": "hi"}'),
        ("text/plain; charset=utf-8", '{"message": "hi"}'),
        ("application/x-www-form-urlencoded", "message=hi"),
        ("multipart/form-data; boundary=xyz",
         '--xyz\r\nContent-Disposition: form-data; name="message"\r\n\r\nhi\r\n--xyz--\r\n'),
        ("application/xml", "<message>hi</message>"),
        (None, '{"message": "hi"}'),  # a body without any content type
    ],
)  # fmt: skip
async def test_non_json_content_type_is_415(client, db, world, content_type, content):
    async with nothing_written(db, world):
        r = await post_raw(client, world.url, content, world.headers, content_type)
    assert_error(r, 415)


async def test_form_encoded_body_is_415(client, db, world):
    async with nothing_written(db, world):
        r = await client.post(world.url, data={"message": "hi"}, headers=world.headers)
    assert_error(r, 415)


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "Application/JSON", "application/vnd.api+json"]
)
async def test_json_content_types_are_accepted(client, world, content_type):
    r = await post_raw(client, world.url, '{"message": "hi"}', world.headers, content_type)
    assert r.status_code == 200, r.text
    assert r.json()["response"] == "echo: hi"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"message": "hi"',
        b"{message: hi}",
        b"not json",
        b'{"message": "hi",}',
        b"{'message': 'hi'}",
        b'{"message": "hi"} trailing',
        b'{"message": "hi \xff"}',  # not UTF-8
    ],
)
async def test_malformed_json_is_400(client, db, world, raw):
    async with nothing_written(db, world):
        r = await post_raw(client, world.url, raw, world.headers)
    assert_error(r, 400)
    assert r.json()["detail"].startswith("JSON parse error - "), r.json()


@pytest.mark.parametrize("content_type", ["application/json", None])
async def test_empty_body_is_400_with_the_missing_message(client, db, world, content_type):
    async with nothing_written(db, world):
        r = await post_raw(client, world.url, b"", world.headers, content_type)
    assert_invalid_body(r, "message")


async def test_body_over_the_size_limit_is_413(client, db, world):
    raw = json.dumps({"message": "x" * 1_100_000})  # 1.1 MB > 1 MiB
    async with nothing_written(db, world):
        r = await post_raw(client, world.url, raw, world.headers)
    assert_error(r, 413)


async def test_chunked_body_over_the_size_limit_is_413(client, db, world):
    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the size is only known by reading
        yield b'{"message": "'
        for _ in range(11):
            yield b"x" * 100_000
        yield b'"}'

    async with nothing_written(db, world):
        r = await client.post(world.url, content=chunks(), headers={**world.headers, **JSON})
    assert "content-length" not in r.request.headers
    assert_error(r, 413)


async def test_message_over_the_length_limit_is_400(client, db, world):
    async with nothing_written(db, world):
        r = await client.post(world.url, json={"message": "x" * 32_001}, headers=world.headers)
    assert_invalid_body(r, "message")


async def test_message_at_the_length_limit_is_accepted(client, db, world):
    message = "y" * 32_000
    r = await client.post(world.url, json={"message": message}, headers=world.headers)
    assert r.status_code == 200, r.text
    async with db() as s:
        stored = await s.scalar(
            select(ChatMessage)
            .join(ChatSession, ChatSession.id == ChatMessage.session_id)
            .where(ChatSession.external_id == r.json()["session_id"], ChatMessage.role == MessageRole.human)
        )
    assert stored is not None and stored.content == message


async def test_message_with_a_nul_character_is_not_a_server_error(client, db, world):
    """SPEC §3.1: no bad input ever answers 5xx. Storing it (200) or refusing it (400) are both fine."""
    before = await row_counts(db, world)
    r = await client.post(world.url, json={"message": "hi\u0000there"}, headers=world.headers)
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        assert_invalid_body(r, "message")
        assert await row_counts(db, world) == before


# --- authentication comes first (SPEC §3.2 step 1 before step 2) -----------------------------------


BAD_BODIES = [
    pytest.param(b'{"message": ', "application/json", id="malformed"),
    pytest.param(b'{"message": ""}', "application/json", id="blank"),
    pytest.param(b"", "application/json", id="empty"),
    pytest.param(b"[]", "application/json", id="not-an-object"),
    pytest.param(b'{"message": "hi"}', "text/plain", id="wrong-content-type"),
    pytest.param(json.dumps({"message": "x" * 1_100_000}).encode(), "application/json", id="oversize"),
]


@pytest.mark.parametrize(("raw", "content_type"), BAD_BODIES)
async def test_bad_body_without_a_credential_is_401(client, db, world, raw, content_type):
    async with nothing_written(db, world):
        r = await post_raw(client, world.url, raw, {}, content_type)
    assert_error(r, 401, NOT_PROVIDED)
    assert r.headers["www-authenticate"] == 'Bearer realm="api"'


@pytest.mark.parametrize(("raw", "content_type"), BAD_BODIES)
async def test_bad_body_with_an_invalid_key_is_401(client, db, world, raw, content_type):
    async with nothing_written(db, world):
        r = await post_raw(client, world.url, raw, {"X-api-key": "abc"}, content_type)
    assert_error(r, 401, {"detail": "Invalid token."})


@pytest.mark.parametrize(("raw", "content_type"), BAD_BODIES)
async def test_bad_body_with_a_read_only_key_is_403(client, db, world, raw, content_type):
    async with db() as s:
        read_only = await add_key(s, world.team, world.user, read_only=True)
        await s.commit()
    async with nothing_written(db, world):
        r = await post_raw(client, world.url, raw, {"X-api-key": read_only}, content_type)
    assert_error(r, 403, {"detail": "You do not have permission to perform this action."})


@pytest.mark.parametrize(
    "url",
    [
        pytest.param(lambda w: chatbot_url(uuid.uuid4()), id="unknown-chatbot"),
        pytest.param(lambda w: chatbot_url("not-a-uuid"), id="non-uuid-chatbot"),
        pytest.param(lambda w: w.version_url(99), id="unknown-version"),
        pytest.param(lambda w: w.version_url("abc"), id="non-integer-version"),
    ],
)
async def test_body_is_validated_before_the_chatbot_is_looked_up(client, db, world, url):
    async with nothing_written(db, world):
        r = await client.post(url(world), json={"message": "  "}, headers=world.headers)
    assert_invalid_body(r, "message")


# --- chatbots and versions that do not exist (SPEC §3.1, §3.2 step 3, §2.1) ------------------------


@pytest.mark.parametrize("chatbot_id", ["not-a-uuid", "123", "0", "null", "x" * 300])
@pytest.mark.parametrize("version", [None, 1])
async def test_non_uuid_chatbot_id_is_404(client, db, world, chatbot_id, version):
    async with nothing_written(db, world):
        r = await client.post(chatbot_url(chatbot_id, version), json={"message": "hi"}, headers=world.headers)
    assert_error(r, 404, CHATBOT_NOT_FOUND)


async def test_non_uuid_chatbot_id_one_character_short_is_404(client, db, world):
    async with nothing_written(db, world):
        r = await client.post(
            chatbot_url(str(world.chatbot.public_id)[:-1]), json={"message": "hi"}, headers=world.headers
        )
    assert_error(r, 404, CHATBOT_NOT_FOUND)


@pytest.mark.parametrize(
    "version",
    ["abc", "1.5", "-1", "+1", "1e1", "0x1", "1abc", pytest.param("²", id="superscript-2")],
)
async def test_non_integer_version_is_404(client, db, world, version):
    async with nothing_written(db, world):
        r = await client.post(world.version_url(version), json={"message": "hi"}, headers=world.headers)
    assert_error(r, 404)


@pytest.mark.parametrize("version", [99, 3, 3_000_000_000, 99_999_999_999_999_999_999])
async def test_unknown_version_is_404(client, db, world, version):
    """After one publish the versions are 1 (published) and 2 (the working draft)."""
    async with nothing_written(db, world):
        r = await client.post(world.version_url(version), json={"message": "hi"}, headers=world.headers)
    assert_error(r, 404, {"detail": f"Chatbot version {version} not found."})


async def test_archived_version_is_404(client, db, world):
    async with db() as s:
        await s.execute(
            update(Chatbot)
            .where(Chatbot.working_version_id == world.chatbot.id, Chatbot.version_number == 1)
            .values(is_archived=True)
        )
        await s.commit()
    async with nothing_written(db, world):
        r = await client.post(world.version_url(1), json={"message": "hi"}, headers=world.headers)
    assert_error(r, 404, {"detail": "Chatbot version 1 not found."})


@pytest.mark.parametrize("version", [None, 0, 1])
async def test_unknown_chatbot_is_404(client, db, world, version):
    async with nothing_written(db, world):
        r = await client.post(chatbot_url(uuid.uuid4(), version), json={"message": "hi"}, headers=world.headers)
    assert_error(r, 404, CHATBOT_NOT_FOUND)


@pytest.mark.parametrize("version", [None, 0, 1, 2])
async def test_another_teams_chatbot_is_404(client, db, world, other_world, version):
    async with nothing_written(db, world, other_world):
        r = await client.post(
            chatbot_url(other_world.chatbot.public_id, version), json={"message": "hi"}, headers=world.headers
        )
    assert_error(r, 404, CHATBOT_NOT_FOUND)


async def test_a_published_version_id_is_not_a_chatbot_id(client, db, world):
    """Versions have their own public_id, but only the head's reaches the chatbot."""
    async with db() as s:
        version_id = await s.scalar(select(Chatbot.public_id).where(Chatbot.working_version_id == world.chatbot.id))
    async with nothing_written(db, world):
        r = await client.post(chatbot_url(version_id), json={"message": "hi"}, headers=world.headers)
    assert_error(r, 404, CHATBOT_NOT_FOUND)


@pytest.mark.parametrize("version", [None, 0, 1, 2])
async def test_archived_chatbot_is_404(client, db, world, version):
    async with db() as s:
        await s.execute(update(Chatbot).where(Chatbot.id == world.chatbot.id).values(is_archived=True))
        await s.commit()
    async with nothing_written(db, world):
        r = await client.post(
            chatbot_url(world.chatbot.public_id, version), json={"message": "hi"}, headers=world.headers
        )
    assert_error(r, 404, CHATBOT_NOT_FOUND)


# --- sessions that are not the caller's (SPEC §3.2 step 5) ------------------------------------------


async def test_session_of_another_user_of_the_team_is_404(client, db, world):
    theirs = await start_session(client, world.url, world.key)
    mine = await add_member_key(db, world)
    async with nothing_written(db, world):
        r = await client.post(world.url, json={"message": "hi", "session": theirs}, headers={"X-api-key": mine})
    assert_error(r, 404, SESSION_NOT_FOUND)


async def test_session_of_another_chatbot_of_the_team_is_404(client, db, world):
    other_bot = await add_chatbot(db, world)
    other_session = await start_session(client, chatbot_url(other_bot.public_id), world.key)
    await start_session(client, world.url, world.key)  # the caller has a session with this bot too
    async with nothing_written(db, world):
        r = await client.post(world.url, json={"message": "hi", "session": other_session}, headers=world.headers)
    assert_error(r, 404, SESSION_NOT_FOUND)


async def test_session_of_another_team_is_404(client, db, world, other_world):
    other_session = await start_session(client, other_world.url, other_world.key)
    async with nothing_written(db, world, other_world):
        r = await client.post(world.url, json={"message": "hi", "session": other_session}, headers=world.headers)
    assert_error(r, 404, SESSION_NOT_FOUND)


@pytest.mark.parametrize(
    "session",
    ["not-a-session", str(uuid.uuid4()), "", "x" * 5000, "a\u0000b"],
    ids=["random", "uuid", "empty", "long", "nul"],
)
async def test_unknown_session_is_404(client, db, world, session):
    await start_session(client, world.url, world.key)  # the caller has an open session
    async with nothing_written(db, world):
        r = await client.post(world.url, json={"message": "hi", "session": session}, headers=world.headers)
    assert_error(r, 404, SESSION_NOT_FOUND)


# --- methods and paths (SPEC §3.1) ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("versioned", [False, True])
async def test_wrong_method_is_405_with_allow(client, db, world, method, versioned):
    url = world.version_url(1) if versioned else world.url
    async with nothing_written(db, world):
        r = await client.request(method, url, json={"message": "hi"}, headers=world.headers)
    assert_error(r, 405)
    assert "POST" in [m.strip() for m in r.headers["allow"].split(",")]


@pytest.mark.parametrize(
    "path",
    [
        "/nope",
        "/channels/api/{id}/incoming",
        "/channels/api/{id}/v/incoming_message",
        "/channels/api/{id}/v1/v1/incoming_message",
        "/channels/api/incoming_message",
        "/channels/api/{id}/incoming_message/extra",
    ],
)
async def test_unknown_path_is_404_json(client, db, world, path):
    async with nothing_written(db, world):
        r = await client.post(path.format(id=world.chatbot.public_id), json={"message": "hi"}, headers=world.headers)
    assert_error(r, 404)


# --- versions that exist (SPEC §2.1) -----------------------------------------------------------------


async def _set_draft_prompt(db: Db, world: World, prompt: str) -> None:
    async with db() as s:
        await s.execute(update(Chatbot).where(Chatbot.id == world.chatbot.id).values(system_prompt=prompt))
        await s.commit()


async def _turn(client, db, fake_llm, world: World, url: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """One turn; returns the AI message's version label and the system prompt the LLM received."""
    text = f"which version? {uuid.uuid4()}"
    r = await client.post(url, json={"message": text}, headers=world.headers)
    assert r.status_code == 200, r.text
    assert r.json()["response"] == f"echo: {text}"
    sent = [q for q in fake_llm.requests() if q["messages"][-1]["content"] == text]
    assert len(sent) == 1
    assert sent[0]["messages"][0]["role"] == "system"
    return (await ai_message(db, r.json()["session_id"])).version_label, sent[0]["messages"][0]["content"]


PUBLISHED_PROMPT = "You are a helpful bot."  # make_world's prompt, copied into version 1


@pytest.mark.parametrize("version", [None, 0])
async def test_no_version_or_v0_is_the_published_version(client, db, fake_llm, world, version):
    await _set_draft_prompt(db, world, f"Draft {uuid.uuid4()}")
    url = world.url if version is None else world.version_url(version)
    assert await _turn(client, db, fake_llm, world, url) == ("v1", PUBLISHED_PROMPT)


async def test_v1_is_version_1(client, db, fake_llm, world):
    await _set_draft_prompt(db, world, f"Draft {uuid.uuid4()}")
    assert await _turn(client, db, fake_llm, world, world.version_url(1)) == ("v1", PUBLISHED_PROMPT)


async def test_the_heads_number_is_the_working_draft(client, db, fake_llm, world):
    draft = f"Draft {uuid.uuid4()}"
    await _set_draft_prompt(db, world, draft)
    assert await _turn(client, db, fake_llm, world, world.version_url(2)) == ("v2-unreleased", draft)


async def test_versions_seen_records_each_version_used(client, db, fake_llm, world):
    await _turn(client, db, fake_llm, world, world.version_url(1))
    await _turn(client, db, fake_llm, world, world.version_url(2))
    await _turn(client, db, fake_llm, world, world.url)
    async with db() as s:
        chat = await s.scalar(select(ChatSession).where(ChatSession.team_id == world.team.id))
    assert chat is not None and sorted(chat.versions_seen) == [1, 2]


@pytest.mark.parametrize("version", [None, 0, 1])
async def test_without_a_published_version_the_working_draft_answers(client, db, fake_llm, settings, version):
    world = await make_world(db, settings, api_base=fake_llm.base_url, publish=False, system_prompt="Draft only.")
    url = world.url if version is None else world.version_url(version)
    assert await _turn(client, db, fake_llm, world, url) == ("v1-unreleased", "Draft only.")
