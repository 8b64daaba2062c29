"""Every provider that is not OpenAI-compatible goes through litellm (SPEC §5.4).

litellm is imported lazily, only when such a provider is first used: the import costs about 4 s
and 200 MB, so importing :mod:`app.llm` must never import it. One attempt per call; our own
retry loop in :class:`app.llm.client.LlmClient` retries, so litellm's retries are disabled.
"""

import os
import threading
from typing import Any

from .base import (
    Completion,
    LlmConfig,
    LlmProviderError,
    TransientError,
    clean_reason,
    http_reason,
    internal_detail,
    is_transient_status,
    parse_retry_after,
)
from .openai_compat import parse_usage

# provider type -> litellm's model prefix ("<prefix>/<model>"). "litellm" passes the model as is.
LITELLM_PREFIXES: dict[str, str | None] = {
    "anthropic": "anthropic",
    "google": "gemini",
    "gemini": "gemini",
    "vertex_ai": "vertex_ai",
    "bedrock": "bedrock",
    "cohere": "cohere",
    "huggingface": "huggingface",
    "replicate": "replicate",
    "sagemaker": "sagemaker",
    "watsonx": "watsonx",
    "databricks": "databricks",
    "cloudflare": "cloudflare",
    "ai21": "ai21",
    "nvidia_nim": "nvidia_nim",
    "litellm": None,
}
LITELLM_TYPES: frozenset[str] = frozenset(LITELLM_PREFIXES)

# Arguments we set ourselves: ``extra`` may not override them.
_RESERVED = frozenset(
    {"model", "messages", "timeout", "num_retries", "max_retries", "stream", "api_key", "api_base"}
)

_litellm: Any = None
_load_lock = threading.Lock()


def load_litellm() -> Any:
    """Import litellm once (blocking, ~4 s: call it from a worker thread)."""
    global _litellm
    if _litellm is None:
        with _load_lock:
            if _litellm is None:
                # The one environment variable this service sets: without it litellm fetches its
                # model cost map over the network at import time (slow, and fails offline). The
                # bundled map is enough for cost estimates. setdefault: an operator's value wins.
                os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
                import litellm

                litellm.suppress_debug_info = True
                _litellm = litellm
    return _litellm


def is_loaded() -> bool:
    return _litellm is not None


def route(config: LlmConfig, provider_type: str) -> str:
    prefix = LITELLM_PREFIXES.get(provider_type)
    if prefix is None or config.model.startswith(prefix + "/"):
        return config.model
    return f"{prefix}/{config.model}"


async def complete_once(
    messages: list[dict[str, str]], config: LlmConfig, provider_type: str, timeout: float
) -> Completion:
    litellm = load_litellm()
    model = route(config, provider_type)
    kwargs: dict[str, Any] = {k: v for k, v in config.extra.items() if k not in _RESERVED}
    kwargs.pop("headers", None)
    if isinstance(config.extra.get("headers"), dict):
        kwargs["extra_headers"] = dict(config.extra["headers"])
    if config.api_key:
        kwargs["api_key"] = config.api_key
    if config.api_base:
        kwargs["api_base"] = config.api_base
    if config.max_tokens is not None:
        kwargs["max_tokens"] = config.max_tokens
    try:
        response = await litellm.acompletion(
            model=model,
            messages=messages,
            timeout=timeout,
            temperature=config.temperature,
            num_retries=0,
            max_retries=0,
            drop_params=True,  # e.g. a temperature the model does not accept
            **kwargs,
        )
    except Exception as exc:  # noqa: BLE001 - classified below
        raise classify(exc, litellm, config.api_key) from None

    try:
        text = response.choices[0].message.content or ""
    except (AttributeError, IndexError, TypeError):
        raise LlmProviderError("invalid response from provider: no message content") from None
    try:
        cost = litellm.completion_cost(completion_response=response)
        cost = float(cost) if cost is not None else None
    except Exception:  # noqa: BLE001 - unknown models have no price: never fail on cost
        cost = None
    return Completion(
        text=str(text),
        usage=parse_usage(getattr(response, "usage", None)),
        model=getattr(response, "model", None) or config.model,
        latency_ms=0.0,
        cost_usd=cost,
    )


def classify(exc: Exception, litellm: Any, api_key: str | None) -> Exception:
    """litellm's exception -> TransientError (408/429/5xx/timeouts) or LlmProviderError."""
    message = clean_reason(_message(exc), api_key)  # addresses removed: it reaches clients
    internal = internal_detail(exc, api_key)
    if isinstance(exc, litellm.Timeout | TimeoutError):
        reason = f"timed out ({message})" if message else "timed out"
        return TransientError(reason, timed_out=True, internal=internal)
    if isinstance(exc, litellm.APIConnectionError):  # its status_code is a made-up 500
        how = "connection refused" if "refused" in internal.lower() else "connection failed"
        return TransientError(f"could not reach provider: {how}", internal=internal)
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int):
        name = type(exc).__name__
        reason = clean_reason(f"{name}: {message}" if message else name, api_key)
        return LlmProviderError(reason, internal=internal)
    reason = http_reason(status, message, api_key)
    if is_transient_status(status):
        return TransientError(reason, status_code=status, retry_after=_retry_after(exc), internal=internal)
    return LlmProviderError(reason, status_code=status, internal=internal)


def _message(exc: Exception) -> str:
    text = getattr(exc, "message", None)
    text = text if isinstance(text, str) and text else str(exc)
    # "litellm.InternalServerError: InternalServerError: OpenAIException - <provider message>"
    if text.startswith("litellm.") and " - " in text:
        text = text.split(" - ", 1)[1]
    return text


def _retry_after(exc: Exception) -> float | None:
    for source in (getattr(exc, "response", None), exc):
        headers = getattr(source, "headers", None) or getattr(
            source, "litellm_response_headers", None
        )
        if headers is not None:
            try:
                value = headers.get("retry-after")
            except Exception:  # noqa: BLE001
                continue
            if value is not None:
                return parse_retry_after(str(value))
    return None
