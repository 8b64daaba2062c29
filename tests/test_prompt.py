"""Unit tests of app/services/prompt.py (SPEC §5.2): the system prompt template and the history
the model sees. No HTTP, no database: ChatMessage objects are built in memory."""

import json
from datetime import UTC, datetime

import pytest

from app.models import Chatbot, ChatMessage, HistoryMode, MessageRole
from app.services import prompt
from app.services.prompt import (
    current_datetime,
    estimate_tokens,
    history_read_limit,
    needs_participant_data,
    render_system_prompt,
    select_history,
)

NOW = datetime(2024, 3, 5, 10, 15, 0, tzinfo=UTC)  # a Tuesday


def render(
    template: str,
    *,
    participant_data: dict | None = None,
    session_state: dict | None = None,
    source_material: str = "",
    now: datetime | None = NOW,
) -> str:
    return render_system_prompt(
        template,
        participant_data=participant_data if participant_data is not None else {},
        session_state=session_state if session_state is not None else {},
        source_material=source_material,
        now=now,
    )


def msg(role: MessageRole, content: str, **metadata: object) -> ChatMessage:
    hidden = bool(metadata.pop("hidden", False))
    return ChatMessage(role=role, content=content, hidden=hidden, message_metadata=dict(metadata))


def human(content: str, **metadata: object) -> ChatMessage:
    return msg(MessageRole.human, content, **metadata)


def ai(content: str, **metadata: object) -> ChatMessage:
    return msg(MessageRole.ai, content, **metadata)


# ---- render_system_prompt: the variables ---------------------------------------------------


def test_plain_prompt_is_returned_unchanged():
    assert render("You are a helpful bot.") == "You are a helpful bot."


def test_participant_data_renders_as_json():
    data = {"name": "Zoë", "age": 31, "tags": ["a", "b"]}
    out = render("Data: {participant_data}", participant_data=data)
    assert out.startswith("Data: ")
    assert json.loads(out.removeprefix("Data: ")) == data
    assert "Zoë" in out  # not \u-escaped


def test_session_state_renders_as_json():
    state = {"step": 2, "basket": ["apple"]}
    out = render("State={session_state}", session_state=state)
    assert json.loads(out.removeprefix("State=")) == state


def test_source_material_is_inserted_verbatim():
    material = "Opening hours: 9-17.\nClosed on {holidays}."
    assert render("Know this: {source_material}", source_material=material) == (
        f"Know this: {material}"
    )


def test_page_context_comes_from_session_state():
    state = {"page_context": {"url": "https://shop.example/p/42", "product_ids": [42, 7]}}
    out = render("Page: {page_context}", session_state=state)
    assert json.loads(out.removeprefix("Page: ")) == state["page_context"]
    assert render("URL {page_context.url}", session_state=state) == "URL https://shop.example/p/42"
    assert render("First {page_context.product_ids.0}", session_state=state) == "First 42"


def test_page_context_missing_renders_empty():
    assert render("Page: [{page_context}]", session_state={"other": 1}) == "Page: []"
    assert render("URL: [{page_context.url}]") == "URL: []"


def test_every_variable_in_one_template():
    out = render(
        "{participant_data.name}|{session_state.step}|{page_context.url}|{source_material}|"
        "{current_datetime}",
        participant_data={"name": "Ada"},
        session_state={"step": 3, "page_context": {"url": "/home"}},
        source_material="FAQ",
    )
    assert out == "Ada|3|/home|FAQ|Tuesday, 05 March 2024 10:15:00 UTC"


# ---- dotted access, missing keys, list indexes -----------------------------------------------


def test_dotted_access_into_nested_data():
    data = {"address": {"city": "Nairobi", "geo": {"lat": -1.29}}}
    assert render("City: {participant_data.address.city}", participant_data=data) == "City: Nairobi"
    assert render("Lat: {participant_data.address.geo.lat}", participant_data=data) == "Lat: -1.29"


def test_dotted_access_to_an_object_renders_json():
    data = {"address": {"city": "Nairobi"}}
    out = render("{participant_data.address}", participant_data=data)
    assert json.loads(out) == {"city": "Nairobi"}


def test_scalar_values_render_as_text():
    data = {"n": 0, "ok": True, "none": None, "f": 1.5}
    assert render("[{participant_data.n}]", participant_data=data) == "[0]"
    assert render("[{participant_data.ok}]", participant_data=data) == "[true]"
    assert render("[{participant_data.none}]", participant_data=data) == "[]"
    assert render("[{participant_data.f}]", participant_data=data) == "[1.5]"


@pytest.mark.parametrize(
    "template",
    [
        "[{participant_data.missing}]",
        "[{participant_data.address.missing}]",
        "[{participant_data.address.city.deeper}]",  # into a string
        "[{participant_data.kids.5}]",  # index out of range
        "[{participant_data.kids.x}]",  # not an index
        "[{session_state.nope}]",
    ],
)
def test_missing_keys_render_empty(template):
    data = {"address": {"city": "Paris"}, "kids": ["Ann"]}
    assert render(template, participant_data=data) == "[]"


def test_missing_root_data_renders_empty():
    assert render("[{participant_data.address.city}]", participant_data={}) == "[]"
    assert render("[{source_material}]", source_material="") == "[]"


def test_list_index():
    data = {"kids": [{"name": "Ann"}, {"name": "Bob"}]}
    assert render("{participant_data.kids.1.name}", participant_data=data) == "Bob"
    assert render("{participant_data.kids.0.name}", participant_data=data) == "Ann"


def test_the_same_variable_twice():
    out = render("{participant_data.n} and {participant_data.n}", participant_data={"n": "x"})
    assert out == "x and x"


# ---- other braces are left as written ------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        'Answer as JSON like {"a": 1}.',
        "Unknown {foo} stays.",
        "Empty {} stays.",
        "Not closed {participant_data.name",
        "Trailing dot {participant_data.} stays",
        "def f(): return {x: 1 for x in y}",
        "Case matters: {Participant_Data}",
    ],
)
def test_non_variable_braces_are_left_as_written(template):
    assert render(template, participant_data={"name": "Ada"}) == template


def test_doubled_braces_are_not_an_escape():
    # Not str.format: the inner {participant_data} is a variable and the outer braces stay.
    out = render("{{participant_data.name}}", participant_data={"name": "Ada"})
    assert out == "{Ada}"


def test_json_example_next_to_a_variable():
    out = render(
        'Hi {participant_data.name}. Reply like {"ok": true}.', participant_data={"name": "Ada"}
    )
    assert out == 'Hi Ada. Reply like {"ok": true}.'


def test_values_are_not_rendered_again():
    # A value containing a variable must not be expanded (no template injection from user data).
    data = {"name": "{source_material}"}
    out = render("Name: {participant_data.name}", participant_data=data, source_material="SECRET")
    assert out == "Name: {source_material}"


# ---- {current_datetime} ---------------------------------------------------------------------


def test_current_datetime_defaults_to_utc():
    assert render("Now: {current_datetime}") == "Now: Tuesday, 05 March 2024 10:15:00 UTC"


def test_current_datetime_in_the_participants_timezone():
    out = render("{current_datetime}", participant_data={"timezone": "Asia/Kolkata"})
    assert out == "Tuesday, 05 March 2024 15:45:00 IST"  # UTC+5:30


def test_current_datetime_crosses_the_date_line():
    out = render("{current_datetime}", participant_data={"timezone": "Pacific/Kiritimati"})
    assert out.startswith("Wednesday, 06 March 2024 00:15:00")  # UTC+14


def test_current_datetime_west_of_utc():
    out = render("{current_datetime}", participant_data={"timezone": "America/New_York"})
    assert out == "Tuesday, 05 March 2024 05:15:00 EST"


@pytest.mark.parametrize("bad", ["Not/AZone", "", "../../etc/passwd", "Asia", 530, None, ["UTC"]])
def test_current_datetime_falls_back_to_utc_for_a_bad_timezone(bad):
    out = render("{current_datetime}", participant_data={"timezone": bad})
    assert out == "Tuesday, 05 March 2024 10:15:00 UTC"


def test_current_datetime_without_now_is_the_current_time():
    before = datetime.now(UTC).replace(microsecond=0)
    out = render("{current_datetime}", now=None)
    after = datetime.now(UTC)
    parsed = datetime.strptime(out.removesuffix(" UTC"), "%A, %d %B %Y %H:%M:%S")
    parsed = parsed.replace(tzinfo=UTC)
    assert before <= parsed <= after


def test_current_datetime_helper_matches_the_template():
    data = {"timezone": "Asia/Kolkata"}
    assert current_datetime(data, NOW) == render("{current_datetime}", participant_data=data)


def test_needs_participant_data():
    assert needs_participant_data("Hi {participant_data.name}")
    assert needs_participant_data("Now {current_datetime}")  # the timezone is in the data
    assert not needs_participant_data("Hi {source_material} {session_state}")


# ---- select_history --------------------------------------------------------------------------


def test_select_history_turns_newest_first_into_oldest_first():
    newest_first = [ai("a2"), human("h2"), ai("a1"), human("h1")]
    out = select_history(newest_first, HistoryMode.max_history_length, 8192, 0)
    assert out == [
        {"role": "user", "content": "h1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "h2"},
        {"role": "assistant", "content": "a2"},
    ]


def test_select_history_maps_system_messages():
    out = select_history([msg(MessageRole.system, "note")], HistoryMode.max_history_length, 8192, 0)
    assert out == [{"role": "system", "content": "note"}]


@pytest.mark.parametrize("mode", list(HistoryMode))
def test_hidden_messages_are_excluded(mode):
    newest_first = [
        ai("answer"),
        human("1", hidden="consent"),
        ai("We record chats.", hidden="consent"),
        human("first", hidden=True),
        human("visible"),
    ]
    out = select_history(newest_first, mode, 8192, 0)
    assert out == [
        {"role": "user", "content": "visible"},
        {"role": "assistant", "content": "answer"},
    ]


def test_non_hidden_metadata_is_kept():
    out = select_history(
        [human("seed", seed_message=True), ai("x", model="m", hidden=False)],
        HistoryMode.max_history_length, 8192, 0,
    )  # fmt: skip
    assert [m["content"] for m in out] == ["x", "seed"]


def test_truncate_tokens_drops_the_oldest_over_the_limit():
    old_long = human("L" * 400)  # 104 tokens
    newest_first = [ai("a3"), human("h3"), ai("a2"), human("h2"), ai("a1"), old_long]
    small = sum(estimate_tokens(m.content) for m in newest_first[:5])
    out = select_history(newest_first, HistoryMode.truncate_tokens, small + 50, 0)
    assert [m["content"] for m in out] == ["a1", "h2", "a2", "h3", "a3"]


def test_truncate_tokens_keeps_a_contiguous_newest_suffix():
    # Once one message does not fit, older ones are dropped even if they would fit: no gaps.
    newest_first = [human("new"), ai("B" * 800), human("tiny"), human("old")]
    budget = estimate_tokens("new") + estimate_tokens("tiny") + estimate_tokens("old") + 10
    out = select_history(newest_first, HistoryMode.truncate_tokens, budget, 0)
    assert out == [{"role": "user", "content": "new"}]


def test_truncate_tokens_counts_the_reserved_tokens():
    newest_first = [human("h2"), ai("a1"), human("h1")]
    total = sum(estimate_tokens(m.content) for m in newest_first)
    assert len(select_history(newest_first, HistoryMode.truncate_tokens, total, 0)) == 3
    # The same limit with room reserved for the system prompt and the new message: the
    # oldest message goes first.
    reserved = estimate_tokens("h1")
    out = select_history(newest_first, HistoryMode.truncate_tokens, total, reserved)
    assert [m["content"] for m in out] == ["a1", "h2"]


def test_truncate_tokens_exact_fit_is_kept():
    newest_first = [human("abcd"), human("efgh")]
    exact = sum(estimate_tokens(m.content) for m in newest_first)
    assert len(select_history(newest_first, HistoryMode.truncate_tokens, exact, 0)) == 2
    assert len(select_history(newest_first, HistoryMode.truncate_tokens, exact - 1, 0)) == 1


def test_truncate_tokens_with_no_budget_sends_no_history():
    newest_first = [human("h1")]
    assert select_history(newest_first, HistoryMode.truncate_tokens, 100, 100) == []
    assert select_history(newest_first, HistoryMode.truncate_tokens, 100, 500) == []


def test_truncate_tokens_ignores_hidden_messages_in_the_budget():
    newest_first = [human("new"), ai("H" * 4000, hidden="consent"), human("old")]
    budget = estimate_tokens("new") + estimate_tokens("old")
    out = select_history(newest_first, HistoryMode.truncate_tokens, budget, 0)
    assert [m["content"] for m in out] == ["old", "new"]


def test_select_history_of_nothing():
    for mode in HistoryMode:
        assert select_history([], mode, 8192, 0) == []


# ---- the token budget, in every mode ---------------------------------------------------------

LONG = 20_000  # characters: 5,004 estimated tokens (a message may have up to 32,000)


def long_turns(count: int) -> list[ChatMessage]:
    """``count`` long messages, newest first, as the history is read: "m<count-1>" is the newest."""
    return [
        (human if i % 2 == 0 else ai)(f"m{i} " + "x" * (LONG - len(f"m{i} ")))
        for i in reversed(range(count))
    ]


def labels(out: list[dict[str, str]]) -> list[str]:
    return [m["content"].split(" ", 1)[0] for m in out]


@pytest.mark.parametrize("mode", list(HistoryMode))
def test_every_mode_keeps_the_newest_messages_within_the_token_budget(mode):
    newest_first = long_turns(prompt.SUMMARIZE_KEEP)  # what any mode may have read
    each = estimate_tokens(newest_first[0].content)
    token_limit = 3 * each + each // 2  # room for three and a half: three are kept
    out = select_history(newest_first, mode, token_limit, 0)
    assert labels(out) == ["m17", "m18", "m19"]  # the newest, oldest first
    assert sum(len(m["content"]) for m in out) <= token_limit * 4


@pytest.mark.parametrize("mode", list(HistoryMode))
def test_every_mode_counts_the_reserved_tokens(mode):
    # The system prompt, summary and new message come out of the same budget.
    newest_first = long_turns(6)
    each = estimate_tokens(newest_first[0].content)
    out = select_history(newest_first, mode, 4 * each, each)
    assert labels(out) == ["m3", "m4", "m5"]


@pytest.mark.parametrize("mode", list(HistoryMode))
def test_a_new_message_over_the_budget_leaves_no_history(mode):
    # The new message itself is always sent (build_messages appends it); the history is empty.
    new_message = "n" * LONG
    reserved = estimate_tokens("You are a helpful bot.") + estimate_tokens(new_message)
    assert reserved > 4096
    assert select_history(long_turns(4), mode, 4096, reserved) == []
    assert select_history([human("hi")], mode, 4096, reserved) == []


def test_max_history_length_keeps_at_most_n_messages_and_stays_within_the_budget():
    mode = HistoryMode.max_history_length
    newest_first = long_turns(40)
    each = estimate_tokens(newest_first[0].content)
    # N = 4 binds when the budget has room for more ...
    read = newest_first[: history_read_limit(mode, 4)]
    assert labels(select_history(read, mode, 10 * each, 0)) == ["m36", "m37", "m38", "m39"]
    # ... and the budget binds when N messages would not fit (the issue: 30 messages of
    # 32,000 characters were about 1 MB on every call).
    read = newest_first[: history_read_limit(mode, 30)]
    assert len(read) == 30
    assert labels(select_history(read, mode, 2 * each, 0)) == ["m38", "m39"]
    # Short messages: the N newest, as before.
    short = [human(f"s{i}") for i in reversed(range(40))][: history_read_limit(mode, 30)]
    assert len(select_history(short, mode, 8192, 0)) == 30


def test_the_default_token_limit_bounds_thirty_messages_of_32000_characters():
    default = Chatbot.__table__.c.token_limit.default.arg
    assert default == 8192
    newest_first = [human(f"{i} " + "y" * 31_990) for i in range(30)]
    new_message = "z" * 32_000
    reserved = estimate_tokens("You are a helpful bot.") + estimate_tokens(new_message)
    for mode in HistoryMode:
        sent = select_history(newest_first, mode, default, reserved)
        assert sent == []  # nothing fits beside a new message of 32,000 characters
        sent = select_history(newest_first, mode, default, 0)
        assert len(sent) == 1 and sum(len(m["content"]) for m in sent) <= default * 4


def test_summarize_keeps_its_recent_window_within_the_budget():
    mode = HistoryMode.summarize
    newest_first = long_turns(30)[: history_read_limit(mode, 30)]
    assert len(newest_first) == prompt.SUMMARIZE_KEEP
    each = estimate_tokens(newest_first[0].content)
    summary = prompt.summary_message("S" * 4000)["content"]
    reserved = estimate_tokens(summary) + estimate_tokens("new")
    out = select_history(newest_first, mode, 8192 * 2, reserved)
    assert labels(out) == ["m27", "m28", "m29"]
    assert 3 * each + reserved <= 8192 * 2 < 4 * each + reserved


# ---- within_budget and the older unsummarized messages ------------------------------------------


def test_within_budget_keeps_the_newest_contiguous_suffix():
    oldest_first = [human("old"), ai("B" * 800), human("mid"), ai("new")]
    small = estimate_tokens("mid") + estimate_tokens("new")
    assert prompt.within_budget(oldest_first, small) == oldest_first[2:]
    # Once one does not fit, older ones are dropped even if they would fit: no gaps.
    assert prompt.within_budget(oldest_first, small + estimate_tokens("old") + 10) == (
        oldest_first[2:]
    )
    everything = sum(estimate_tokens(m.content) for m in oldest_first)
    assert prompt.within_budget(oldest_first, everything) == oldest_first
    assert prompt.within_budget(oldest_first, everything - 1) == oldest_first[1:]
    assert prompt.within_budget(oldest_first, 0) == []
    assert prompt.within_budget(oldest_first, -5) == []
    assert prompt.within_budget([], 100) == []


def test_older_unsummarized_default_changes_nothing():
    newest_first = long_turns(4)
    mode = HistoryMode.summarize
    assert select_history(newest_first, mode, 8192, 0) == select_history(
        newest_first, mode, 8192, 0, older_unsummarized=[]
    )


def test_older_unsummarized_fill_what_the_recent_window_leaves():
    # Oldest first, as build_messages has them; they come before the recent window.
    older = [human("o1"), ai("o2"), human("o3 " + "x" * 4000), ai("o4"), human("o5")]
    window = [ai("w2"), human("w1")]  # newest first
    used = sum(estimate_tokens(m.content) for m in window)
    fits_two = used + estimate_tokens("o4") + estimate_tokens("o5") + 10
    out = select_history(window, HistoryMode.summarize, fits_two, 0, older_unsummarized=older)
    assert labels(out) == ["o4", "o5", "w1", "w2"]
    plenty = select_history(window, HistoryMode.summarize, 8192, 0, older_unsummarized=older)
    assert labels(plenty) == ["o1", "o2", "o3", "o4", "o5", "w1", "w2"]


def test_long_older_unsummarized_messages_stay_within_the_budget():
    # Up to nine of them (SUMMARIZE_BATCH - 1) are shown as they are; or up to 400 while
    # summarising fails. Each may be 32,000 characters.
    older = list(reversed(long_turns(29)))[:9]  # m0 .. m8, oldest first
    window = long_turns(29)[:20]  # m28 .. m9, newest first
    each = estimate_tokens(window[0].content)
    token_limit = 28 * each + each // 2  # the window of 20 and 8 of the 9 older ones
    out = select_history(window, HistoryMode.summarize, token_limit, 0, older_unsummarized=older)
    assert labels(out) == [f"m{i}" for i in range(1, 29)]  # older to fill, then the window
    assert sum(len(m["content"]) for m in out) <= token_limit * 4
    small = select_history(window, HistoryMode.summarize, 2 * each, 0, older_unsummarized=older)
    assert labels(small) == ["m27", "m28"]


def test_older_unsummarized_are_dropped_when_the_window_was_cut():
    # No gap between them and the window: if the oldest of the window did not fit, a small
    # older message must not be shown either.
    older = [human("o1")]
    window = [ai("w2"), human("W" * 4000)]
    budget = estimate_tokens("w2") + estimate_tokens("o1") + 10
    out = select_history(window, HistoryMode.summarize, budget, 0, older_unsummarized=older)
    assert labels(out) == ["w2"]


def test_older_unsummarized_skip_hidden_messages():
    older = [human("o1"), ai("H" * 4000, hidden="consent"), human("o2")]
    out = select_history([ai("w1")], HistoryMode.summarize, 8192, 0, older_unsummarized=older)
    assert labels(out) == ["o1", "o2", "w1"]


# ---- helpers used by the history modes --------------------------------------------------------


def test_estimate_tokens_is_about_four_characters_a_token():
    assert estimate_tokens("") == 4
    assert estimate_tokens("x" * 400) == 104


def test_history_read_limit_per_mode():
    assert history_read_limit(HistoryMode.max_history_length, 4) == 4
    assert history_read_limit(HistoryMode.max_history_length, 0) == 0
    assert history_read_limit(HistoryMode.max_history_length, 10**6) == prompt.HISTORY_READ_LIMIT
    assert history_read_limit(HistoryMode.summarize, 4) == prompt.SUMMARIZE_KEEP == 20
    assert history_read_limit(HistoryMode.truncate_tokens, 4) == prompt.HISTORY_READ_LIMIT


def test_summary_request_and_message():
    request = prompt.summary_request("Ada likes tea.", [human("hi"), ai("hello")])
    assert request[0]["role"] == "system" and request[0]["content"] == prompt.SUMMARY_INSTRUCTION
    assert request[1] == {
        "role": "user",
        "content": "Summary so far: Ada likes tea.\n\nhuman: hi\nai: hello",
    }
    assert prompt.summary_request(None, [human("hi")])[1]["content"] == "human: hi"
    assert prompt.summary_message("S") == {
        "role": "system",
        "content": "Summary of the earlier conversation: S",
    }
