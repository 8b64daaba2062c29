"""The parts of a turn that every path shares: gates, the messages for the model, the call.

Used by the general turn (``conversation.py``, any database) and the PostgreSQL driver fast path
(``fast_turn.py``).
"""

from dataclasses import dataclass, field
from typing import Any, Protocol

from app.auth.principal import Principal
from app.errors import ProviderFailed, ProviderTimedOut
from app.llm import Completion, LlmClient, LlmConfig, LlmError, LlmTimeoutError
from app.services import prompt
from app.services.llm_config import PROVIDER_FAILED
from app.services.participants import ApiPlace

NOT_ALLOWED_REPLY = "Sorry, you are not allowed to chat to this bot"
RESET_REPLY = "Conversation reset"
RESET_COMMAND = "/reset"


class BotConfig(Protocol):
    system_prompt: str
    source_material: str
    history_mode: str
    token_limit: int
    participant_allowlist: list[Any]


class SessionState(Protocol):
    state: dict[str, Any]
    summary: str | None


@dataclass(frozen=True)
class TurnRequest:
    """One incoming message: who sends what to which chatbot, version and session."""

    principal: Principal
    experiment_id: str
    version: int | None
    message: str
    session_external_id: str | None


@dataclass
class TurnResult:
    response: str
    session_id: str
    attachments: list[dict[str, str]] = field(default_factory=list)


@dataclass
class TurnInput:
    """What the model is asked to answer, read under the lease before anything is written."""

    history: list[Any]  # newest first: rows with id, role, content, hidden
    older_unsummarized: list[Any]  # oldest first (history_mode "summarize" only)
    user_text: str | None  # None: the last stored human message is the one to answer


def gate_reply(bot: BotConfig, place: ApiPlace, principal: Principal) -> str | None:
    """The reply of a gate that stops the turn before anything is stored, if one does."""
    if not is_allowed(bot, place.identifier, principal):
        return NOT_ALLOWED_REPLY
    if not place.channel_enabled:
        return place.disabled_message or ""
    return None


def is_allowed(bot: BotConfig, identifier: str, principal: Principal) -> bool:
    """An allow-list admits the identifiers on it and the team's members (user credentials
    always act as a member of the credential's team)."""
    allowlist = bot.participant_allowlist or []
    return not allowlist or identifier in allowlist or principal.user_id is not None


def build_messages(
    bot: BotConfig,
    chat: SessionState,
    participant_data: dict[str, Any],
    turn: TurnInput,
    summary: str | None,
) -> list[dict[str, str]]:
    system = prompt.render_system_prompt(
        bot.system_prompt,
        participant_data=participant_data,
        session_state=chat.state,
        source_material=bot.source_material,
    )
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    if summary:
        messages.append(prompt.summary_message(summary))
    if summary == chat.summary and turn.older_unsummarized:
        # Too few to fold into the summary yet: show them as they are.
        messages.extend(prompt.to_openai(m) for m in turn.older_unsummarized)
    reserved = sum(prompt.estimate_tokens(m["content"]) for m in messages)
    if turn.user_text is not None:
        reserved += prompt.estimate_tokens(turn.user_text)
    messages.extend(prompt.select_history(turn.history, bot.history_mode, bot.token_limit, reserved))
    if turn.user_text is not None:
        messages.append({"role": "user", "content": turn.user_text})
    return messages


async def complete(
    llm: LlmClient, messages: list[dict[str, str]], config: LlmConfig, session_id: str
) -> Completion:
    try:
        return await llm.complete(messages, config)
    except LlmTimeoutError as exc:
        raise ProviderTimedOut(PROVIDER_FAILED.format(reason=exc.reason), session_id=session_id)
    except LlmError as exc:
        raise ProviderFailed(PROVIDER_FAILED.format(reason=exc.reason), session_id=session_id)


def completion_metadata(completion: Completion) -> dict[str, Any]:
    return {
        "model": completion.model,
        "latency_ms": round(completion.latency_ms, 1),
        "usage": {
            "prompt_tokens": completion.usage.prompt_tokens,
            "completion_tokens": completion.usage.completion_tokens,
            "total_tokens": completion.usage.total_tokens,
        },
        "cost_usd": completion.cost_usd,
    }
