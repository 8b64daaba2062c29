"""The bot's behaviour through incoming_message (SPEC §2.1, §3.2 steps 6–8, §3.4, §5.1–§5.3):
checked on what the fake LLM received and on what was stored.

The fake LLM is shared by the whole run: every test uses unique message texts (or a unique model
name) and filters ``fake_llm.requests()`` by them.
"""

import re
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select, update

from app.models import Channel, Chatbot, ChatMessage, ChatSession, Participant, ParticipantData
from app.services import prompt
from app.services.chatbots import publish_version
from tests.factories import make_world

CONSENT = "We record chats."
CONFIRM = "Reply 1 to agree."
CONSENT_PROMPT = f"{CONSENT}\n\n{CONFIRM}"


def tag() -> str:
    return uuid.uuid4().hex[:10]


async def send(client, world, message: str, version: int | str | None = None, session=None):  # type: ignore[no-untyped-def]
    url = world.url if version is None else world.version_url(version)
    body: dict[str, str] = {"message": message}
    if session is not None:
        body["session"] = session
    return await client.post(url, json=body, headers=world.headers)


async def chat(client, world, message: str, version: int | str | None = None) -> dict:  # type: ignore[no-untyped-def]
    r = await send(client, world, message, version)
    assert r.status_code == 200, r.text
    return r.json()


def sent_for(fake_llm, last_user: str) -> list[dict]:  # type: ignore[no-untyped-def]
    """The chat requests the fake LLM received whose last user message is ``last_user``."""
    found = []
    for body in fake_llm.requests():
        users = [m for m in body.get("messages", []) if m.get("role") == "user"]
        if users and users[-1].get("content") == last_user:
            found.append(body)
    return found


def only_request_for(fake_llm, last_user: str) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    found = sent_for(fake_llm, last_user)
    assert len(found) == 1, f"{len(found)} requests end with {last_user!r}"
    return found[0]["messages"]


def any_request_mentions(fake_llm, text: str) -> bool:  # type: ignore[no-untyped-def]
    return any(
        text in str(m.get("content"))
        for body in fake_llm.requests()
        for m in body.get("messages", [])
    )


async def load_session(db, session_id: str) -> ChatSession:  # type: ignore[no-untyped-def]
    async with db() as s:
        found = await s.scalar(select(ChatSession).where(ChatSession.external_id == session_id))
        assert found is not None
        return found


async def stored(db, session_id: str) -> list[ChatMessage]:  # type: ignore[no-untyped-def]
    async with db() as s:
        chat_session = await s.scalar(
            select(ChatSession).where(ChatSession.external_id == session_id)
        )
        return list(
            (
                await s.scalars(
                    select(ChatMessage)
                    .where(ChatMessage.session_id == chat_session.id)
                    .order_by(ChatMessage.id)
                )
            ).all()
        )


async def team_message_count(db, world) -> int:  # type: ignore[no-untyped-def]
    async with db() as s:
        return await s.scalar(
            select(func.count(ChatMessage.id))
            .join(ChatSession, ChatSession.id == ChatMessage.session_id)
            .where(ChatSession.team_id == world.team.id)
        )


# ---- §5.2 the system prompt ----------------------------------------------------------------


async def test_system_prompt_variables_reach_the_model(client, db, fake_llm, settings):
    w = await make_world(
        db, settings, api_base=fake_llm.base_url,
        system_prompt="City: {participant_data.address.city}. Now: {current_datetime}. "
                      "Material: {source_material}",
        source_material="Opening hours are 9 to 5.",
    )  # fmt: skip
    t = tag()
    # Before any participant data exists: missing keys render empty, the time is UTC.
    first = await chat(client, w, f"first {t}")
    system = only_request_for(fake_llm, f"first {t}")[0]
    assert system["role"] == "system"
    m = re.fullmatch(
        r"City: \. Now: (.+) UTC\. Material: Opening hours are 9 to 5\.", system["content"]
    )
    assert m, system["content"]
    shown = datetime.strptime(m.group(1), "%A, %d %B %Y %H:%M:%S").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - shown) < timedelta(minutes=2)

    async with db() as s:
        participant = await s.scalar(
            select(Participant).where(
                Participant.team_id == w.team.id,
                Participant.platform == "api",
                Participant.identifier == w.user.email,
            )
        )
        # The first message created the participant's (empty) data row for this chatbot.
        data = await s.scalar(
            select(ParticipantData).where(
                ParticipantData.participant_id == participant.id,
                ParticipantData.chatbot_id == w.chatbot.id,
            )
        )
        assert data.data == {}
        data.data = {"address": {"city": "Pune"}, "timezone": "Asia/Kolkata"}
        await s.commit()

    second = await chat(client, w, f"second {t}")
    assert second["session_id"] == first["session_id"]
    system = only_request_for(fake_llm, f"second {t}")[0]
    m = re.fullmatch(
        r"City: Pune\. Now: (.+) IST\. Material: Opening hours are 9 to 5\.", system["content"]
    )
    assert m, system["content"]
    shown = datetime.strptime(m.group(1), "%A, %d %B %Y %H:%M:%S").replace(
        tzinfo=ZoneInfo("Asia/Kolkata")
    )
    assert abs(datetime.now(UTC) - shown) < timedelta(minutes=2)  # 5:30 ahead of UTC, not UTC


async def test_session_state_and_page_context_reach_the_model(client, db, fake_llm, settings):
    w = await make_world(
        db, settings, api_base=fake_llm.base_url,
        system_prompt='Step {session_state.step} on {page_context.url}. Reply as {"ok": true}.',
    )  # fmt: skip
    t = tag()
    first = await chat(client, w, f"one {t}")
    assert only_request_for(fake_llm, f"one {t}")[0]["content"] == (
        'Step  on . Reply as {"ok": true}.'
    )
    async with db() as s:
        await s.execute(
            update(ChatSession)
            .where(ChatSession.external_id == first["session_id"])
            .values(state={"step": 2, "page_context": {"url": "/pricing"}})
        )
        await s.commit()
    await chat(client, w, f"two {t}")
    assert only_request_for(fake_llm, f"two {t}")[0]["content"] == (
        'Step 2 on /pricing. Reply as {"ok": true}.'
    )


async def test_participant_data_of_another_chatbot_is_not_used(client, db, fake_llm, settings):
    w = await make_world(
        db, settings, api_base=fake_llm.base_url, system_prompt="City: {participant_data.city}."
    )
    t = tag()
    await chat(client, w, f"hello {t}")
    async with db() as s:
        other = Chatbot(team_id=w.team.id, name="Other", llm_model="fake-model")
        s.add(other)
        await s.flush()
        participant = await s.scalar(
            select(Participant).where(
                Participant.team_id == w.team.id, Participant.identifier == w.user.email
            )
        )
        s.add(
            ParticipantData(
                participant_id=participant.id, chatbot_id=other.id, data={"city": "Oslo"}
            )
        )
        await s.commit()
    await chat(client, w, f"again {t}")
    assert only_request_for(fake_llm, f"again {t}")[0]["content"] == "City: ."


# ---- §5.2 history modes ----------------------------------------------------------------------


async def test_max_history_length_bounds_the_history(client, db, fake_llm, settings):
    w = await make_world(db, settings, api_base=fake_llm.base_url, max_history_length=4)
    t = tag()
    for i in range(1, 6):
        await chat(client, w, f"turn {i} {t}")
    sixth = await chat(client, w, f"turn 6 {t}")
    messages = only_request_for(fake_llm, f"turn 6 {t}")
    assert messages == [
        {"role": "system", "content": "You are a helpful bot."},
        {"role": "user", "content": f"turn 4 {t}"},
        {"role": "assistant", "content": f"echo: turn 4 {t}"},
        {"role": "user", "content": f"turn 5 {t}"},
        {"role": "assistant", "content": f"echo: turn 5 {t}"},
        {"role": "user", "content": f"turn 6 {t}"},
    ]
    # The whole history is always stored.
    assert len(await stored(db, sixth["session_id"])) == 12


async def test_max_history_length_counts_what_the_model_sees(client, db, fake_llm, settings):
    """Hidden messages (the consent exchange) are not shown to the model, so they must not take
    places in the max_history_length window either."""
    w = await make_world(
        db, settings, api_base=fake_llm.base_url, max_history_length=4,
        consent_text=CONSENT, confirmation_text=CONFIRM,
    )  # fmt: skip
    t = tag()
    await chat(client, w, f"A {t}")
    await chat(client, w, "1")
    await chat(client, w, f"B {t}")
    await chat(client, w, f"C {t}")
    history = only_request_for(fake_llm, f"C {t}")[1:-1]
    assert [m["content"] for m in history] == [
        f"A {t}", f"echo: A {t}", f"B {t}", f"echo: B {t}",
    ]  # fmt: skip


async def test_truncate_tokens_drops_the_oldest_messages(client, db, fake_llm, settings):
    w = await make_world(
        db, settings, api_base=fake_llm.base_url, history_mode="truncate_tokens", token_limit=100
    )
    t = tag()
    long_text = f"long {t} " + "L" * 400  # about 100 tokens alone
    await chat(client, w, long_text)
    await chat(client, w, f"short 1 {t}")
    last = await chat(client, w, f"short 2 {t}")

    assert only_request_for(fake_llm, f"short 1 {t}") == [
        {"role": "system", "content": "You are a helpful bot."},
        {"role": "user", "content": f"short 1 {t}"},
    ]
    assert only_request_for(fake_llm, f"short 2 {t}") == [
        {"role": "system", "content": "You are a helpful bot."},
        {"role": "user", "content": f"short 1 {t}"},
        {"role": "assistant", "content": f"echo: short 1 {t}"},
        {"role": "user", "content": f"short 2 {t}"},
    ]
    # Dropped from the prompt, not from the record.
    contents = [m.content for m in await stored(db, last["session_id"])]
    assert contents[0] == long_text and len(contents) == 6


async def test_truncate_tokens_keeps_everything_that_fits(client, db, fake_llm, settings):
    w = await make_world(db, settings, api_base=fake_llm.base_url, history_mode="truncate_tokens")
    t = tag()
    for i in range(1, 4):
        await chat(client, w, f"t{i} {t} " + "x" * 200)
    await chat(client, w, f"last {t}")
    messages = only_request_for(fake_llm, f"last {t}")
    assert len(messages) == 1 + 6 + 1


async def test_summarize_bounds_the_history_and_stores_the_summary(client, db, fake_llm, settings):
    w = await make_world(db, settings, api_base=fake_llm.base_url, history_mode="summarize")
    t = tag()
    turns = 22
    texts = [f"s{i:02d} {t}" for i in range(turns)]
    session_id = None
    for text in texts:
        session_id = (await chat(client, w, text))["session_id"]

    summary_prefix = "Summary of the earlier conversation: "
    for i, text in enumerate(texts):
        messages = only_request_for(fake_llm, text)
        assert messages[0] == {"role": "system", "content": "You are a helpful bot."}
        assert messages[-1] == {"role": "user", "content": text}
        summaries = [m for m in messages if m["content"].startswith(summary_prefix)]
        history = [m for m in messages[1:-1] if m not in summaries]
        assert len(history) <= prompt.SUMMARIZE_KEEP + 9, (i, len(history))
        # Before 30 earlier messages nothing is summarised: everything is shown as it is.
        if i < 15:
            assert summaries == [] and len(history) == 2 * i
        else:
            assert len(summaries) == 1 and summaries[0]["role"] == "system", i

    # Two summary requests: after 15 turns (the 10 oldest messages), after 20 (the next 10).
    summary_requests = [
        body["messages"]
        for body in fake_llm.requests()
        if body["messages"][0]["content"] == prompt.SUMMARY_INSTRUCTION
        and t in body["messages"][-1]["content"]
    ]
    assert len(summary_requests) == 2
    first_transcript = summary_requests[0][-1]["content"]
    assert first_transcript.startswith(f"human: {texts[0]}\nai: echo: {texts[0]}\n")
    assert first_transcript.endswith(f"ai: echo: {texts[4]}")
    second_transcript = summary_requests[1][-1]["content"]
    assert second_transcript.startswith("Summary so far: echo: human: ")
    assert f"human: {texts[5]}\n" in second_transcript
    assert second_transcript.endswith(f"ai: echo: {texts[9]}")

    chat_session = await load_session(db, session_id)
    records = await stored(db, session_id)
    assert len(records) == 2 * turns  # the whole history is kept
    assert chat_session.summary and chat_session.summary == "echo: " + second_transcript
    assert chat_session.summary_until_id == records[19].id

    # The last turn saw: the stored summary, then every message after it, then the new one.
    last = only_request_for(fake_llm, texts[-1])
    assert last[1] == {"role": "system", "content": summary_prefix + chat_session.summary}
    after_summary = [m.content for m in records if m.id > chat_session.summary_until_id][:-2]
    assert [m["content"] for m in last[2:-1]] == after_summary


# ---- §3.2 step 6: gates ----------------------------------------------------------------------


async def test_allowlist_admits_team_members(client, db, fake_llm, settings):
    w = await make_world(
        db, settings, api_base=fake_llm.base_url, participant_allowlist=["someone@else.org"]
    )
    t = tag()
    r = await send(client, w, f"member {t}")
    assert r.status_code == 200, r.text
    assert r.json()["response"] == f"echo: member {t}"


async def _disable_api_channel(db, world, disabled_message: str | None) -> None:  # type: ignore[no-untyped-def]
    async with db() as s:
        result = await s.execute(
            update(Channel)
            .where(
                Channel.team_id == world.team.id,
                Channel.chatbot_id.is_(None),
                Channel.platform == "api",
            )
            .values(enabled=False, disabled_message=disabled_message)
        )
        assert result.rowcount == 1
        await s.commit()


async def test_disabled_channel_replies_its_message_and_stores_nothing(client, world, db, fake_llm):
    t = tag()
    first = await chat(client, world, f"open {t}")
    assert await team_message_count(db, world) == 2
    await _disable_api_channel(db, world, "We are closed")

    r = await send(client, world, f"closed {t}")
    assert r.status_code == 200, r.text
    assert r.json()["response"] == "We are closed"
    assert r.json()["attachments"] == []
    assert r.json()["session_id"] == first["session_id"]
    # The channel gate comes before /reset: the session is not reset either.
    r = await send(client, world, "/reset")
    assert r.json()["response"] == "We are closed"
    assert r.json()["session_id"] == first["session_id"]
    assert (await load_session(db, first["session_id"])).ended_at is None

    assert await team_message_count(db, world) == 2
    assert sent_for(fake_llm, f"closed {t}") == []


async def test_disabled_channel_without_a_message_replies_empty(client, world, db, fake_llm):
    t = tag()
    await chat(client, world, f"open {t}")
    await _disable_api_channel(db, world, None)
    r = await send(client, world, f"closed {t}")
    assert r.status_code == 200, r.text
    assert r.json()["response"] == ""
    assert await team_message_count(db, world) == 2
    assert sent_for(fake_llm, f"closed {t}") == []


# ---- §5.3 conversational consent ---------------------------------------------------------------


async def test_conversational_consent(client, db, fake_llm, settings):
    w = await make_world(
        db, settings, api_base=fake_llm.base_url, consent_text=CONSENT, confirmation_text=CONFIRM
    )
    t = tag()
    first_text = f"What are your opening hours? {t}"
    first = await chat(client, w, first_text)
    sid = first["session_id"]
    assert first["response"] == "We record chats.\n\nReply 1 to agree."
    assert (await load_session(db, sid)).status == "pending"

    for not_yes in (f"maybe {t}", "11", "yes"):
        again = await chat(client, w, not_yes)
        assert again["response"] == CONSENT_PROMPT
        assert again["session_id"] == sid
        assert (await load_session(db, sid)).status == "pending"
    assert sent_for(fake_llm, first_text) == []  # the model has not been asked anything yet

    agreed = await chat(client, w, "1")
    assert agreed["session_id"] == sid
    assert agreed["response"] == f"echo: {first_text}"  # answers the FIRST message
    assert (await load_session(db, sid)).status == "active"
    assert only_request_for(fake_llm, first_text) == [
        {"role": "system", "content": "You are a helpful bot."},
        {"role": "user", "content": first_text},
    ]

    later_text = f"And on Sunday? {t}"
    later = await chat(client, w, later_text)
    assert later["response"] == f"echo: {later_text}"
    messages = only_request_for(fake_llm, later_text)
    assert messages == [
        {"role": "system", "content": "You are a helpful bot."},
        {"role": "user", "content": first_text},
        {"role": "assistant", "content": f"echo: {first_text}"},
        {"role": "user", "content": later_text},
    ]
    assert not any(CONSENT in m["content"] or CONFIRM in m["content"] for m in messages)
    assert not any_request_mentions(fake_llm, f"maybe {t}")

    # Nothing is lost: the consent exchange stays in the record.
    contents = [m.content for m in await stored(db, sid)]
    assert contents == [
        first_text, CONSENT_PROMPT,
        f"maybe {t}", CONSENT_PROMPT, "11", CONSENT_PROMPT, "yes", CONSENT_PROMPT,
        "1", f"echo: {first_text}",
        later_text, f"echo: {later_text}",
    ]  # fmt: skip


async def test_consent_answers_the_seed_message(client, db, fake_llm, settings):
    seed = f"Introduce yourself {tag()}"
    w = await make_world(
        db, settings, api_base=fake_llm.base_url,
        consent_text=CONSENT, confirmation_text=CONFIRM, seed_message=seed,
    )  # fmt: skip
    t = tag()
    first = await chat(client, w, f"hi {t}")
    assert first["response"] == CONSENT_PROMPT
    agreed = await chat(client, w, "1")
    assert agreed["response"] == f"echo: {seed}"
    assert (await load_session(db, agreed["session_id"])).status == "active"
    messages = only_request_for(fake_llm, seed)
    assert messages[-1] == {"role": "user", "content": seed}
    assert not any(CONSENT in m["content"] for m in messages)
    records = await stored(db, agreed["session_id"])
    assert [(m.role, m.content) for m in records][-2:] == [("human", seed), ("ai", f"echo: {seed}")]
    assert records[-2].message_metadata.get("seed_message") is True


@pytest.mark.parametrize(
    ("config", "refusals"),
    [
        ({"max_history_length": 4}, 2),
        ({}, 15),  # the default max_history_length (30)
        ({"history_mode": "summarize"}, 10),
    ],
    ids=["max_history_length=4", "default", "summarize"],
)
async def test_consent_after_several_refusals_still_answers_the_first_message(
    client, db, fake_llm, settings, config, refusals
):
    """However many times the consent prompt was repeated, "1" answers the first message: the
    hidden consent exchange must not push it out of the history the model sees."""
    w = await make_world(
        db, settings, api_base=fake_llm.base_url,
        consent_text=CONSENT, confirmation_text=CONFIRM, **config,
    )  # fmt: skip
    t = tag()
    first_text = f"first question {t}"
    await chat(client, w, first_text)
    for i in range(refusals):
        assert (await chat(client, w, f"not yet {i}"))["response"] == CONSENT_PROMPT
    agreed = await chat(client, w, "1")
    assert agreed["response"] == f"echo: {first_text}"
    assert only_request_for(fake_llm, first_text)[-1] == {"role": "user", "content": first_text}


async def test_consent_without_confirmation_text(client, db, fake_llm, settings):
    w = await make_world(db, settings, api_base=fake_llm.base_url, consent_text=CONSENT)
    first = await chat(client, w, f"hi {tag()}")
    assert first["response"] == CONSENT


# ---- §2.1 versions ----------------------------------------------------------------------------


async def test_each_version_uses_its_own_config(client, world, db, fake_llm):
    async with db() as s:
        head = await s.get(Chatbot, world.chatbot.id)
        head.system_prompt = "Prompt two"
        v2 = await publish_version(s, head)
        assert v2.version_number == 2 and v2.is_published
        head.system_prompt = "Draft prompt"
        await s.commit()
        assert head.version_number == 3

    t = tag()
    cases = [  # (version, message, expected system prompt, expected label)
        (None, f"default {t}", "Prompt two", "v2"),
        (1, f"one {t}", "You are a helpful bot.", "v1"),
        (3, f"three {t}", "Draft prompt", "v3-unreleased"),
        (0, f"zero {t}", "Prompt two", "v2"),
        (2, f"two {t}", "Prompt two", "v2"),
    ]
    sid = None
    for version, text, system_prompt, _ in cases:
        body = await chat(client, world, text, version)
        assert body["response"] == f"echo: {text}"
        assert sid is None or body["session_id"] == sid  # versions share the session
        sid = body["session_id"]
        assert only_request_for(fake_llm, text)[0] == {"role": "system", "content": system_prompt}

    ai_labels = [m.version_label for m in await stored(db, sid) if m.role == "ai"]
    assert ai_labels == [label for *_, label in cases]
    assert (await load_session(db, sid)).versions_seen == [2, 1, 3]

    r = await send(client, world, f"four {t}", version=4)
    assert r.status_code == 404
    assert r.json() == {"detail": "Chatbot version 4 not found."}


async def test_publishing_without_make_default_keeps_the_published_version(
    client, world, db, fake_llm
):
    async with db() as s:
        head = await s.get(Chatbot, world.chatbot.id)
        head.system_prompt = "Not the default"
        v2 = await publish_version(s, head, make_default=False)
        assert not v2.is_published
        await s.commit()
    t = tag()
    await chat(client, world, f"plain {t}")
    await chat(client, world, f"pinned {t}", version=2)
    assert only_request_for(fake_llm, f"plain {t}")[0]["content"] == "You are a helpful bot."
    assert only_request_for(fake_llm, f"pinned {t}")[0]["content"] == "Not the default"


async def test_archived_version_is_not_found(client, world, db, fake_llm):
    async with db() as s:
        head = await s.get(Chatbot, world.chatbot.id)
        head.system_prompt = "Prompt two"
        await publish_version(s, head)  # v2 becomes the published one
        await s.execute(
            update(Chatbot)
            .where(Chatbot.working_version_id == world.chatbot.id, Chatbot.version_number == 1)
            .values(is_archived=True)
        )
        await s.commit()
    r = await send(client, world, f"old {tag()}", version=1)
    assert r.status_code == 404
    assert r.json() == {"detail": "Chatbot version 1 not found."}
    t = tag()
    await chat(client, world, f"current {t}")
    assert only_request_for(fake_llm, f"current {t}")[0]["content"] == "Prompt two"


async def test_unpublished_chatbot_uses_the_working_version(client, db, fake_llm, settings):
    w = await make_world(db, settings, api_base=fake_llm.base_url, publish=False)
    body = await chat(client, w, f"draft {tag()}")
    records = await stored(db, body["session_id"])
    assert records[-1].version_label == "v1-unreleased"
    assert (await load_session(db, body["session_id"])).versions_seen == [1]


# ---- §3.2 step 7, §3.4 provider failures -----------------------------------------------------


async def test_provider_failure_is_a_502_and_keeps_the_human_message(
    client, db, fake_llm, settings
):
    w = await make_world(db, settings, api_base=fake_llm.base_url, model="fail-500")
    t = tag()
    r = await send(client, w, f"lost? {t}")
    assert r.status_code == 502, r.text
    body = r.json()
    assert body["detail"].startswith("The language model provider failed: ")
    assert "response" not in body  # no apology invented as if the bot said it
    sid = body["session_id"]
    assert [(m.role, m.content) for m in await stored(db, sid)] == [("human", f"lost? {t}")]
    assert len(sent_for(fake_llm, f"lost? {t}")) == 2  # one retry of a 5xx (llm_max_retries=1)

    # The session is not left locked: the next message is processed (and fails the same way).
    r = await send(client, w, f"still there? {t}", session=sid)
    assert r.status_code == 502, r.text
    assert r.json()["session_id"] == sid
    assert [m.content for m in await stored(db, sid)] == [f"lost? {t}", f"still there? {t}"]


async def test_permanent_provider_error_is_not_retried(client, db, fake_llm, settings):
    w = await make_world(db, settings, api_base=fake_llm.base_url, model=f"fail-400#{tag()}")
    t = tag()
    r = await send(client, w, f"bad request {t}")
    assert r.status_code == 502, r.text
    assert r.json()["detail"].startswith("The language model provider failed: ")
    assert len(sent_for(fake_llm, f"bad request {t}")) == 1
    assert [m.role for m in await stored(db, r.json()["session_id"])] == ["human"]


async def test_garbage_from_the_provider_is_a_502(client, db, fake_llm, settings):
    w = await make_world(db, settings, api_base=fake_llm.base_url, model="garbage")
    r = await send(client, w, f"hello {tag()}")
    assert r.status_code == 502, r.text
    assert r.json()["detail"].startswith("The language model provider failed: ")
    assert [m.role for m in await stored(db, r.json()["session_id"])] == ["human"]


async def test_transient_provider_error_is_retried(client, db, fake_llm, settings):
    model = f"flaky-1-500#{tag()}"
    w = await make_world(db, settings, api_base=fake_llm.base_url, model=model)
    t = tag()
    r = await send(client, w, f"retry me {t}")
    assert r.status_code == 200, r.text
    assert r.json()["response"] == f"echo: retry me {t}"
    assert len([b for b in fake_llm.requests() if b.get("model") == model]) == 2
    records = await stored(db, r.json()["session_id"])
    assert [(m.role, m.content) for m in records] == [
        ("human", f"retry me {t}"), ("ai", f"echo: retry me {t}"),
    ]  # fmt: skip


async def test_failed_turn_is_in_the_history_of_the_next(client, db, fake_llm, settings):
    """The human message of a failed turn was stored, so the model sees it next time."""
    w = await make_world(db, settings, api_base=fake_llm.base_url, model="fail-500")
    t = tag()
    r = await send(client, w, f"lost turn {t}")
    assert r.status_code == 502
    async with db() as s:
        await s.execute(
            update(Chatbot)
            .where(Chatbot.working_version_id == w.chatbot.id)
            .values(llm_model="fake-model")
        )
        await s.commit()
    await chat(client, w, f"next turn {t}")
    messages = only_request_for(fake_llm, f"next turn {t}")
    assert [m["content"] for m in messages[1:]] == [f"lost turn {t}", f"next turn {t}"]


async def test_chatbot_without_a_provider_is_a_502_and_keeps_the_human_message(client, db, settings, fake_llm):
    world = await make_world(db, settings, api_base=fake_llm.base_url)
    async with db() as s:
        await s.execute(update(Chatbot).where(Chatbot.team_id == world.team.id).values(llm_provider_id=None))
        await s.commit()
    r = await client.post(world.url, json={"message": "anyone there?"}, headers=world.headers)
    assert r.status_code == 502
    body = r.json()
    assert body["detail"] == "The language model provider failed: this chatbot has no LLM provider."
    async with db() as s:
        chat = await s.scalar(select(ChatSession).where(ChatSession.external_id == body["session_id"]))
        stored = (await s.scalars(select(ChatMessage.content).where(ChatMessage.session_id == chat.id))).all()
    assert stored == ["anyone there?"]
    assert chat.lease_until is None
