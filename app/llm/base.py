"""The LLM layer's value types and errors (SPEC §5.4).

Providers raise :class:`LlmProviderError` for permanent failures and :class:`TransientError`
(internal: never escapes :class:`app.llm.client.LlmClient`) for failures worth retrying.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Reasons end up in API responses ("The language model provider failed: <reason>"): keep them short.
MAX_REASON_CHARS = 300


@dataclass(frozen=True)
class LlmConfig:
    provider_type: str
    model: str
    api_key: str | None = None
    api_base: str | None = None
    temperature: float = 0.7
    max_tokens: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # never show the key in logs or tracebacks
        key = "***" if self.api_key else None
        return (
            f"LlmConfig(provider_type={self.provider_type!r}, model={self.model!r}, api_key={key}, "
            f"api_base={self.api_base!r}, temperature={self.temperature!r}, "
            f"max_tokens={self.max_tokens!r})"
        )


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


@dataclass(frozen=True)
class Completion:
    text: str
    usage: Usage
    model: str
    latency_ms: float
    cost_usd: float | None = None


class LlmError(Exception):
    """Base of the layer's errors. ``reason`` is a short human string without secrets or
    addresses: it reaches API clients. ``internal`` is what only the log may see (the
    provider's host and port, the network error as the library put it)."""

    status_code: int | None = None

    def __init__(self, reason: str, internal: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.internal = internal


class LlmProviderError(LlmError):
    """The provider failed: a permanent error, a bad response, or transient errors exhausted."""

    def __init__(self, reason: str, status_code: int | None = None, internal: str | None = None) -> None:
        super().__init__(reason, internal)
        self.status_code = status_code


class LlmTimeoutError(LlmError):
    """Every attempt timed out, or the total time budget ran out during an attempt."""


class TransientError(Exception):
    """Internal: a failure worth retrying (connection error, timeout, HTTP 408/429/5xx)."""

    def __init__(
        self,
        reason: str,
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
        timed_out: bool = False,
        internal: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.internal = internal
        self.status_code = status_code
        self.retry_after = retry_after
        self.timed_out = timed_out


def is_transient_status(status: int) -> bool:
    return status in (408, 429) or status >= 500


# What a provider's or a library's message may say about where it is: URLs, IPv4 addresses,
# bracketed IPv6 addresses and host:port pairs. Clients get "<address>"; the log gets the rest.
_ADDRESS = re.compile(
    r"\b[a-z][a-z0-9+.-]*://\S+"  # a URL
    r"|\[[0-9a-f:.]+\](?::\d+)?"  # [::1]:8000
    r"|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"  # 10.0.0.5:8000
    r"|\b[a-z][a-z0-9-]*(?:\.[a-z0-9-]+)*:\d{2,5}\b",  # llm.internal:8000
    re.IGNORECASE,
)


def without_addresses(text: str) -> str:
    return _ADDRESS.sub("<address>", text)


def clean_reason(text: str, api_key: str | None) -> str:
    """One line, bounded, without addresses, and never containing the API key (providers
    sometimes echo it)."""
    text = " ".join(str(text).split())
    if api_key:
        text = text.replace(api_key, "***")
    text = without_addresses(text)
    if len(text) > MAX_REASON_CHARS:
        text = text[: MAX_REASON_CHARS - 1] + "…"
    return text


def internal_detail(exc: BaseException, api_key: str | None) -> str:
    """An exception as the log may show it: addresses kept, the API key not."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text.replace(api_key, "***") if api_key else text


def http_reason(status: int, message: str | None, api_key: str | None) -> str:
    if message:
        return clean_reason(f"HTTP {status} from provider: {message}", api_key)
    return f"HTTP {status} from provider"


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date); None when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        from datetime import datetime, timezone
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)
