"""What the model is sent for a turn (system prompt, summary, history, the new message), the
call, and what is recorded of it (``app.services.turn``)."""

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from app.errors import ProviderFailed, ProviderTimedOut
from app.llm import Completion, LlmClient, LlmConfig, LlmError, LlmTimeoutError
from app.services import prompt
from app.services.llm_config import PROVIDER_FAILED
from app.stores.base import BotConfig, Claim, StoredMessage

log = logging.getLogger(__name__)


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
    """The model's reply, or a 502/504 that names the provider (its type) and how it failed
    (timed out, connection refused, the HTTP status and its message), never where it is: the
    host and port, and the error as the network library put it, go to the log."""
    try:
        return await llm.complete(messages, config)
    except LlmError as exc:
        log.warning(
            "LLM provider %s at %s (model %s) failed: %s%s", config.provider_type,
            _origin(config.api_base), config.model, exc.reason,
            f" [{exc.internal}]" if exc.internal else "",
        )  # fmt: skip
        error = ProviderTimedOut if isinstance(exc, LlmTimeoutError) else ProviderFailed
        reason = f"{config.provider_type}: {exc.reason}"
        raise error(PROVIDER_FAILED.format(reason=reason), session_id=session_id) from None


def _origin(api_base: str | None) -> str:
    """scheme://host:port of an api_base (any credentials in it left out), for the log."""
    if not api_base:
        return "its default address"
    url = urlsplit(api_base)
    try:
        port = f":{url.port}" if url.port else ""
    except ValueError:
        port = ":<invalid port>"
    return f"{url.scheme}://{url.hostname}{port}"


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
