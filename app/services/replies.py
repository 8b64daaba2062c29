"""What the model is sent for a turn (system prompt, summary, history, the new message), the
call, and what is recorded of it (``app.services.turn``)."""

from dataclasses import dataclass
from typing import Any

from app.errors import ProviderFailed, ProviderTimedOut
from app.llm import Completion, LlmClient, LlmConfig, LlmError, LlmTimeoutError
from app.services import prompt
from app.services.llm_config import PROVIDER_FAILED
from app.stores.base import BotConfig, Claim, StoredMessage


@dataclass
class TurnInput:
    """What the model is asked to answer, read under the lease before anything is written."""

    history: list[StoredMessage]  # newest first
    older_unsummarized: list[StoredMessage]  # oldest first (history_mode "summarize" only)
    user_text: str | None  # None: the last stored human message is the one to answer


def build_messages(
    bot: BotConfig,
    chat: Claim,
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
    # Too few to fold into the summary yet (or summarising failed): shown as they are, within
    # what the recent window leaves of the budget.
    older = turn.older_unsummarized if summary == chat.summary else ()
    reserved = sum(prompt.estimate_tokens(m["content"]) for m in messages)
    if turn.user_text is not None:
        reserved += prompt.estimate_tokens(turn.user_text)
    messages.extend(
        prompt.select_history(
            turn.history, bot.history_mode, bot.token_limit, reserved, older_unsummarized=older
        )
    )
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
