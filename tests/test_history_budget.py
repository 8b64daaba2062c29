"""The history's token budget through incoming_message (SPEC §5.1–5.2): in every history mode,
what the model receives besides the new message stays within ``token_limit`` (at the estimate of
four characters a token), and the history kept is the newest.

Long messages (20,000 characters; a message may have up to 32,000): the fake LLM echoes each, so
every stored message is about 20,000 characters. On PostgreSQL the steady-state turns of
``max_history_length`` and ``truncate_tokens`` run through ``fast_turn.py``, so that path is
checked too.
"""

import uuid

import pytest

from tests.factories import make_world

LONG = 20_000
# Room for the system prompt, the new message (5,004 estimated tokens) and two history messages
# (the last exchange, 10,009 tokens), not a third: each turn sees the previous exchange.
TOKEN_LIMIT = 16_000
MODES = ["max_history_length", "truncate_tokens", "summarize"]


def long_text(label: str) -> str:
    return label + " " + "x" * (LONG - len(label) - 1)


async def long_chat(client, world, text: str) -> None:  # type: ignore[no-untyped-def]
    r = await client.post(world.url, json={"message": text}, headers=world.headers)
    assert r.status_code == 200, r.text
    assert r.json()["response"] == f"echo: {text}"


def request_for(fake_llm, new_message: str) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    """The one chat request the fake LLM received that ends with ``new_message``."""
    found = [
        body["messages"]
        for body in fake_llm.requests()
        if body.get("messages") and body["messages"][-1] == {"role": "user", "content": new_message}
    ]
    assert len(found) == 1, f"{len(found)} requests end with {new_message[:20]!r}"
    return found[0]


def check_turn(messages: list[dict[str, str]], conversation: list[str], new_message: str) -> None:
    """What the model received for one turn: the system prompt, the newest history within the
    budget, the new message."""
    assert messages[0] == {"role": "system", "content": "You are a helpful bot."}
    assert messages[-1] == {"role": "user", "content": new_message}
    before_new = sum(len(m["content"]) for m in messages[:-1])
    assert before_new <= TOKEN_LIMIT * 4, before_new
    history = [m["content"] for m in messages[1:-1]]
    # The previous exchange when there is one: the newest messages, in order, nothing older.
    assert history == conversation[-2:]


@pytest.mark.parametrize("mode", MODES)
async def test_long_messages_reach_the_model_within_the_token_budget(
    client, db, fake_llm, settings, mode
):
    w = await make_world(
        db, settings, api_base=fake_llm.base_url, history_mode=mode, token_limit=TOKEN_LIMIT
    )
    t = uuid.uuid4().hex[:10]
    conversation: list[str] = []  # what is stored, oldest first
    for i in range(1, 8):
        text = long_text(f"{mode} {i} {t}")
        await long_chat(client, w, text)
        check_turn(request_for(fake_llm, text), conversation, text)
        conversation += [text, f"echo: {text}"]


async def test_summarize_bounds_the_older_unsummarized_messages(client, db, fake_llm, settings):
    """From the 12th turn the 20-message recent window is full and the messages before it are
    shown as they are until ten of them are folded into the summary (the 16th turn). Those
    must stay within the budget too, after the newest ones."""
    w = await make_world(
        db, settings, api_base=fake_llm.base_url, history_mode="summarize",
        token_limit=TOKEN_LIMIT,
    )  # fmt: skip
    t = uuid.uuid4().hex[:10]
    conversation: list[str] = []
    for i in range(1, 16):
        text = long_text(f"older {i} {t}")
        await long_chat(client, w, text)
        check_turn(request_for(fake_llm, text), conversation, text)
        conversation += [text, f"echo: {text}"]
