"""The fast path: one plain HTTP POST to an OpenAI-compatible ``/chat/completions`` endpoint.

One attempt only; :class:`app.llm.client.LlmClient` owns timeouts and retries. Permanent failures
raise :class:`LlmProviderError`, retryable ones :class:`TransientError`.
"""

import errno
import re
from typing import Any

import aiohttp
import orjson

from .base import (
    Completion,
    LlmConfig,
    LlmProviderError,
    TransientError,
    Usage,
    http_reason,
    internal_detail,
    is_transient_status,
    parse_retry_after,
)

DEFAULT_API_BASES: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "groq": "https://api.groq.com/openai/v1",
    "deepseek": "https://api.deepseek.com/v1",
    "mistral": "https://api.mistral.ai/v1",
    "openrouter": "https://openrouter.ai/api/v1",
    "together": "https://api.together.xyz/v1",
    "xai": "https://api.x.ai/v1",
    "fireworks": "https://api.fireworks.ai/inference/v1",
    "perplexity": "https://api.perplexity.ai",
    "cerebras": "https://api.cerebras.ai/v1",
    "ollama": "http://localhost:11434/v1",
    "vllm": "http://localhost:8000/v1",
    "lmstudio": "http://localhost:1234/v1",
}
# Types that need an explicit api_base.
_BASE_REQUIRED = frozenset({"openai_compatible", "azure"})
OPENAI_COMPATIBLE_TYPES: frozenset[str] = frozenset(DEFAULT_API_BASES) | _BASE_REQUIRED

AZURE_DEFAULT_API_VERSION = "2024-10-21"
# OpenAI's reasoning models refuse any temperature but the default and refuse ``max_tokens``.
_OPENAI_REASONING_MODEL = re.compile(r"^(o\d|gpt-5)")


def build_request(
    messages: list[dict[str, str]], config: LlmConfig, provider_type: str
) -> tuple[str, dict[str, str], bytes]:
    """URL, headers and JSON body of one chat completion request."""
    api_base = config.api_base or DEFAULT_API_BASES.get(provider_type)
    if not api_base:
        raise LlmProviderError(f"provider type {provider_type!r} requires an api_base")
    api_base = api_base.rstrip("/")
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    body: dict[str, Any] = {"model": config.model, "messages": messages}
    reasoning = provider_type == "openai" and _OPENAI_REASONING_MODEL.match(config.model)
    if not reasoning:
        body["temperature"] = config.temperature
    if config.max_tokens is not None:
        body["max_completion_tokens" if provider_type == "openai" else "max_tokens"] = (
            config.max_tokens
        )
    if provider_type == "azure":
        version = config.extra.get("api_version") or AZURE_DEFAULT_API_VERSION
        url = f"{api_base}/openai/deployments/{config.model}/chat/completions?api-version={version}"
        if config.api_key:
            headers["api-key"] = config.api_key
    else:
        url = f"{api_base}/chat/completions"
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
    extra_headers = config.extra.get("headers")
    if isinstance(extra_headers, dict):
        headers.update({str(k): str(v) for k, v in extra_headers.items()})
    return url, headers, orjson.dumps(body)


async def complete_once(
    http: aiohttp.ClientSession,
    request: tuple[str, dict[str, str], bytes],
    config: LlmConfig,
    timeout: float,
) -> Completion:
    """One attempt of the request made by :func:`build_request`."""
    url, headers, body = request
    try:
        async with http.post(
            url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as response:
            status = response.status
            content = await response.read()
            retry_after = response.headers.get("retry-after")
    except TimeoutError as exc:
        raise TransientError(f"timed out ({type(exc).__name__})", timed_out=True) from None
    except aiohttp.InvalidURL:
        raise LlmProviderError("invalid api_base") from None
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        internal = internal_detail(exc, config.api_key)
        raise TransientError(f"could not reach provider: {network_failure(exc)}", internal=internal) from None
    except aiohttp.ClientError as exc:
        internal = internal_detail(exc, config.api_key)
        raise LlmProviderError(f"invalid request to provider: {type(exc).__name__}", internal=internal) from None

    if status != 200:
        reason = http_reason(status, error_message(content), config.api_key)
        if is_transient_status(status):
            raise TransientError(
                reason, status_code=status, retry_after=parse_retry_after(retry_after)
            )
        raise LlmProviderError(reason, status_code=status)
    return parse_completion(content, config.model)


def network_failure(exc: aiohttp.ClientError) -> str:
    """How the connection failed, in words a client may read: never the host or the port
    (aiohttp's messages name both; they go to the log)."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "its host name did not resolve"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if exc.os_error.errno == errno.ECONNREFUSED or isinstance(exc.os_error, ConnectionRefusedError):
            return "connection refused"
        return "connection failed"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the provider closed the connection"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the response was cut off"
    return "connection failed"


def error_message(content: bytes) -> str | None:
    """The provider's message from ``{"error": {"message": ...}}`` and common variants."""
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        text = content[:200].decode("utf-8", "replace").strip()
        return text or None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
        for key in ("message", "detail"):
            if isinstance(data.get(key), str):
                return data[key]
    return None


def parse_completion(content: bytes, default_model: str) -> Completion:
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        raise LlmProviderError(
            "invalid response from provider: not JSON", status_code=200
        ) from None
    try:
        message = data["choices"][0]["message"]
        text = message.get("content")
        if text is None:  # e.g. a refusal
            text = message.get("refusal") or ""
        if not isinstance(text, str):
            raise TypeError
    except (KeyError, IndexError, TypeError, AttributeError):
        raise LlmProviderError(
            "invalid response from provider: no choices[0].message.content", status_code=200
        ) from None
    model = data.get("model")
    return Completion(
        text=text,
        usage=parse_usage(data.get("usage")),
        model=model if isinstance(model, str) and model else default_model,
        latency_ms=0.0,
    )


def parse_usage(raw: Any) -> Usage:
    if raw is None:
        return Usage()
    get = raw.get if isinstance(raw, dict) else lambda k: getattr(raw, k, None)

    def number(key: str) -> int:
        value = get(key)
        return int(value) if isinstance(value, int | float) else 0

    prompt, completion = number("prompt_tokens"), number("completion_tokens")
    return Usage(prompt, completion, number("total_tokens") or prompt + completion)
