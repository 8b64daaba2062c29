"""Turning a chatbot version and its provider row into an ``LlmConfig`` for the LLM layer."""

from typing import Any, Protocol

from app.crypto import decrypt_config
from app.errors import ProviderFailed
from app.llm import LlmConfig

PROVIDER_FAILED = "The language model provider failed: {reason}"


class ModelSettings(Protocol):  # a Chatbot version, or the fast path's row of one
    @property
    def llm_model(self) -> str: ...
    @property
    def temperature(self) -> float: ...
    @property
    def max_tokens(self) -> int | None: ...


class ProviderSettings(Protocol):  # an LlmProvider, or the fast path's row of one
    @property
    def type(self) -> str: ...
    @property
    def config(self) -> dict[str, Any]: ...


def llm_config_for(
    bot: ModelSettings, provider: ProviderSettings | None, secret_key: str, session_id: str
) -> LlmConfig:
    if provider is None:
        raise ProviderFailed(
            PROVIDER_FAILED.format(reason="this chatbot has no LLM provider."), session_id=session_id
        )
    config = decrypt_config(provider.config, secret_key)
    api_key = config.pop("api_key", None)
    api_base = config.pop("api_base", None)
    return LlmConfig(
        provider_type=provider.type,
        model=bot.llm_model,
        api_key=api_key,
        api_base=api_base,
        temperature=bot.temperature,
        max_tokens=bot.max_tokens,
        extra=config,
    )
