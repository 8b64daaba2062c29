"""incoming_message through the ASGI app, with real HTTP to the fake LLM on 127.0.0.1."""

from sqlalchemy import select

from app.models import ChatMessage, ChatSession, Participant


async def _messages(db, session_id: str) -> list[ChatMessage]:  # type: ignore[no-untyped-def]
    async with db() as s:
        chat = await s.scalar(select(ChatSession).where(ChatSession.external_id == session_id))
        return list(
            (await s.scalars(select(ChatMessage).where(ChatMessage.session_id == chat.id).order_by(ChatMessage.id))).all()
        )


async def test_reply_comes_from_the_llm_and_both_messages_are_stored(client, world, db):
    r = await client.post(world.url, json={"message": "Hello bot"}, headers=world.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["response"] == "echo: Hello bot"
    assert body["attachments"] == []
    assert r.headers["x-request-id"]
    messages = await _messages(db, body["session_id"])
    assert [(m.role, m.content) for m in messages] == [("human", "Hello bot"), ("ai", "echo: Hello bot")]
    assert messages[1].version_label == "v1"
    assert messages[1].message_metadata["usage"]["total_tokens"] > 0


async def test_participant_is_the_user_on_the_api_platform(client, world, db):
    r = await client.post(world.url, json={"message": "hi"}, headers=world.headers)
    async with db() as s:
        chat = await s.scalar(select(ChatSession).where(ChatSession.external_id == r.json()["session_id"]))
        participant = await s.get(Participant, chat.participant_id)
    assert (participant.platform, participant.identifier, participant.user_id) == ("api", world.user.email, world.user.id)
    assert chat.status == "active" and chat.versions_seen == [1]


async def test_open_session_is_reused_and_history_is_sent(client, world, fake_llm):
    first = await client.post(world.url, json={"message": "My name is Ada"}, headers=world.headers)
    second = await client.post(world.url, json={"message": "What is my name?"}, headers=world.headers)
    assert first.json()["session_id"] == second.json()["session_id"]
    sent = [r for r in fake_llm.requests() if r["messages"][-1]["content"] == "What is my name?"][-1]
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]
    assert sent["messages"][1]["content"] == "My name is Ada"
    assert sent["messages"][0]["content"] == "You are a helpful bot."


async def test_bearer_api_key_works_like_x_api_key(client, world):
    r = await client.post(world.url, json={"message": "hi"}, headers={"Authorization": f"Bearer {world.key}"})
    assert r.status_code == 200, r.text


async def test_explicit_session_continues_it(client, world):
    first = await client.post(world.url, json={"message": "one"}, headers=world.headers)
    sid = first.json()["session_id"]
    r = await client.post(world.url, json={"message": "two", "session": sid}, headers=world.headers)
    assert r.status_code == 200 and r.json()["session_id"] == sid


async def test_trailing_slash_is_the_same_endpoint(client, world):
    r = await client.post(world.url + "/", json={"message": "hi"}, headers=world.headers)
    assert r.status_code == 200, r.text


async def test_reset_ends_the_session_and_starts_a_new_one(client, world, db):
    first = await client.post(world.url, json={"message": "hello"}, headers=world.headers)
    r = await client.post(world.url, json={"message": "  /RESET "}, headers=world.headers)
    assert r.json()["response"] == "Conversation reset"
    new_sid = r.json()["session_id"]
    assert new_sid != first.json()["session_id"]
    async with db() as s:
        old = await s.scalar(select(ChatSession).where(ChatSession.external_id == first.json()["session_id"]))
    assert old.status == "pending-review" and old.ended_at is not None
    after = await client.post(world.url, json={"message": "again"}, headers=world.headers)
    assert after.json()["session_id"] == new_sid


async def test_unknown_body_fields_are_ignored(client, world):
    r = await client.post(world.url, json={"message": "hi", "colour": "blue"}, headers=world.headers)
    assert r.status_code == 200
