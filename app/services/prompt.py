"""Building what the model sees (SPEC §5.2): the system prompt and the history.

The system prompt is a template. Known variables (``{participant_data}``, ``{current_datetime}``,
``{session_state}``, ``{page_context}``, ``{source_material}``) are replaced, with dotted access
into the JSON ones (``{participant_data.address.city}``); a missing key renders empty. Any other
``{...}`` is left as written, so prompts may contain literal braces (JSON examples, code).

Token counts are estimated (about four characters a token): the history modes only need a bound,
and a tokenizer per model would cost start-up time and memory for little gain.

Every history mode has a token budget, the bot's ``token_limit``: the history gets what the system
prompt, the summary and the new message leave of it (``reserved_tokens``), newest messages first;
the oldest are dropped, and once one does not fit no older one is shown (no gaps). So
``max_history_length`` sends at most N messages *and* stays within the budget (N counts messages,
and thirty messages of 32,000 characters were about 1 MB on every call); ``truncate_tokens`` is the
budget alone; ``summarize`` keeps its recent window within the budget, and the older messages not
yet folded into the summary only fill what the window leaves (``older_unsummarized``). The system
prompt, the summary and the new message are never cut: when they alone reach the budget, the
model gets them with no history (a new message of 32,000 characters is about 8,000 tokens).

The default ``token_limit`` is 8,192 (the column default, app/models/chatbot.py): about 32,000
characters of system prompt, summary, history and new message, so a new message of the most
allowed (32,000 characters, about 8,000 tokens) fits beside a short system prompt. It fits the
context windows of the models in common use (128K tokens for GPT-4o, 1M for GPT-4.1, 200K for
Claude; 16K and up for most others) with room for the reply, even when the estimate is several
times low, as it is for scripts with more tokens per character; and it bounds what a provider
bills per call. Bots with a long system
prompt or source material need a larger one: those count against the budget first.
"""

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from app.models import HistoryMode, MessageRole

VARIABLE = re.compile(r"\{(participant_data|current_datetime|session_state|page_context|source_material)((?:\.[A-Za-z0-9_\-]+)*)\}")
SUMMARIZE_KEEP = 20
# Upper bound on messages read for one turn's history, whatever the mode: keeps the query (and
# the turn's latency) independent of how long the session has been going.
HISTORY_READ_LIMIT = 400

class HistoryMessage(Protocol):
    """A stored message as the history needs it (an ORM object or a plain row)."""

    role: str
    content: str
    hidden: bool


ROLE_TO_OPENAI = {MessageRole.human: "user", MessageRole.ai: "assistant", MessageRole.system: "system"}


def estimate_tokens(text: str) -> int:
    return len(text) // 4 + 4


def _render_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _dig(value: Any, path: list[str]) -> Any:
    for key in path:
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return None
    return value


def current_datetime(participant_data: dict[str, Any], now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    tz_name = participant_data.get("timezone")
    if isinstance(tz_name, str):
        try:
            now = now.astimezone(ZoneInfo(tz_name))
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return now.strftime("%A, %d %B %Y %H:%M:%S %Z")


def render_system_prompt(
    template: str,
    *,
    participant_data: dict[str, Any],
    session_state: dict[str, Any],
    source_material: str,
    now: datetime | None = None,
) -> str:
    if "{" not in template:
        return template
    roots: dict[str, Any] = {
        "participant_data": participant_data,
        "session_state": session_state,
        "page_context": session_state.get("page_context"),
        "source_material": source_material,
    }

    def substitute(match: re.Match[str]) -> str:
        name, dotted = match.group(1), match.group(2)
        if name == "current_datetime":
            return current_datetime(participant_data, now)
        return _render_value(_dig(roots[name], dotted.split(".")[1:]))

    return VARIABLE.sub(substitute, template)


def needs_participant_data(template: str) -> bool:
    return "{participant_data" in template or "{current_datetime" in template


def history_read_limit(mode: str, max_history_length: int) -> int:
    if mode == HistoryMode.max_history_length:
        return max(0, min(max_history_length, HISTORY_READ_LIMIT))
    if mode == HistoryMode.summarize:
        return SUMMARIZE_KEEP
    return HISTORY_READ_LIMIT


def select_history(
    messages: Sequence[HistoryMessage],
    mode: str,
    token_limit: int,
    reserved_tokens: int,
    *,
    older_unsummarized: Sequence[HistoryMessage] = (),
) -> list[dict[str, str]]:
    """Oldest-first chat messages for the model. ``messages`` is newest-first, as read: the mode
    has bounded how many (``history_read_limit``); the newest of them that fit in ``token_limit -
    reserved_tokens`` are kept, whatever the mode. ``older_unsummarized`` (oldest first, mode
    ``summarize``: the messages before the window, not yet in the summary) come before them, as
    many of the newest as fit in what is left, and none unless the whole window fit."""
    budget = token_limit - reserved_tokens
    visible = [m for m in reversed(messages) if not m.hidden]
    chosen = within_budget(visible, budget)
    if older_unsummarized and len(chosen) == len(visible):
        left = budget - sum(estimate_tokens(m.content) for m in chosen)
        chosen = within_budget([m for m in older_unsummarized if not m.hidden], left) + chosen
    return [to_openai(m) for m in chosen]


def within_budget(messages: Sequence[HistoryMessage], budget: int) -> list[HistoryMessage]:
    """The newest of ``messages`` (oldest first) whose estimated tokens add up to at most
    ``budget``, oldest first: a contiguous newest part, so once one does not fit no older one is
    kept even if it would."""
    start = len(messages)
    while start > 0:
        budget -= estimate_tokens(messages[start - 1].content)
        if budget < 0:
            break
        start -= 1
    return list(messages[start:])


def to_openai(message: HistoryMessage) -> dict[str, str]:
    # The roles are StrEnum members, equal to their stored strings: no enum lookup per message.
    return {"role": ROLE_TO_OPENAI.get(message.role, "user"), "content": message.content}


SUMMARY_INSTRUCTION = (
    "Summarise the conversation below for the assistant's own memory: keep names, facts, "
    "decisions and open questions. Output only the summary."
)


def summary_request(previous: str | None, messages: Sequence[HistoryMessage]) -> list[dict[str, str]]:
    transcript = "\n".join(f"{m.role}: {m.content}" for m in messages)
    if previous:
        transcript = f"Summary so far: {previous}\n\n{transcript}"
    return [
        {"role": "system", "content": SUMMARY_INSTRUCTION},
        {"role": "user", "content": transcript},
    ]


def summary_message(summary: str) -> dict[str, str]:
    return {"role": "system", "content": f"Summary of the earlier conversation: {summary}"}
