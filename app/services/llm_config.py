"""Turning a chatbot version and its provider row into an ``LlmConfig`` for the LLM layer."""


from app.crypto import Keys, decrypt_config
from app.errors import ProviderFailed
from app.llm import LlmConfig
from app.stores.base import BotConfig, ProviderConfig

PROVIDER_FAILED = "The language model provider failed: {reason}"


def llm_config_for(
    bot: BotConfig, provider: ProviderConfig | None, keys: Keys, session_id: str
) -> LlmConfig:
    if provider is None:
        raise ProviderFailed(
            PROVIDER_FAILED.format(reason="this chatbot has no LLM provider."), session_id=session_id
        )
    config = decrypt_config(provider.config, keys)
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
