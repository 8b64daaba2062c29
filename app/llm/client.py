"""``LlmClient``: dispatch to a provider, with per-attempt timeouts and bounded retries.

Transient failures (connection errors, timeouts, HTTP 408/429/5xx) are retried up to
``max_retries`` times with exponential backoff and jitter, honouring ``Retry-After``; the whole
call never takes longer than ``total_timeout``. Permanent failures raise at once.
"""

import asyncio
import random
import time
from dataclasses import replace

import aiohttp

from app.observability.metrics import observe_llm_call

from . import litellm_provider, openai_compat
from .base import Completion, LlmConfig, LlmProviderError, LlmTimeoutError, TransientError
from .echo import ECHO_TYPE, echo_completion
from .litellm_provider import LITELLM_TYPES
from .openai_compat import OPENAI_COMPATIBLE_TYPES

PROVIDER_TYPES: frozenset[str] = OPENAI_COMPATIBLE_TYPES | LITELLM_TYPES | {ECHO_TYPE}

# A retry is only worth starting with at least this much of the total budget left.
_MIN_ATTEMPT_SECONDS = 0.05
_MAX_BACKOFF_SECONDS = 30.0


class LlmClient:
    def __init__(
        self,
        http_client: aiohttp.ClientSession,
        *,
        timeout: float = 60.0,
        max_retries: int = 2,
        total_timeout: float = 90.0,
        backoff_base: float = 0.5,
    ) -> None:
        self._http = http_client  # owned by the app: never closed here
        self.timeout = timeout
        self.max_retries = max(0, max_retries)
        self.total_timeout = total_timeout
        self.backoff_base = backoff_base

    async def complete(self, messages: list[dict[str, str]], config: LlmConfig) -> Completion:
        """The one door to every model (turns, bot-initiated messages): counted and timed here
        by provider type (``app.observability.metrics``)."""
        provider_type = config.provider_type.strip().lower()
        label = provider_type if provider_type in PROVIDER_TYPES else "unknown"
        outcome, started = "error", time.perf_counter()
        try:
            completion = await self._complete(messages, config, provider_type)
            outcome = "ok"
            return completion
        except LlmTimeoutError:
            outcome = "timeout"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            observe_llm_call(label, outcome, time.perf_counter() - started)

    async def _complete(
        self, messages: list[dict[str, str]], config: LlmConfig, provider_type: str
    ) -> Completion:
        start = started = time.monotonic()
        if provider_type == ECHO_TYPE:
            return replace(echo_completion(messages), latency_ms=_ms_since(start))
        deadline = start + self.total_timeout

        if provider_type in OPENAI_COMPATIBLE_TYPES:
            request = openai_compat.build_request(messages, config, provider_type)

            async def attempt(timeout: float) -> Completion:
                return await openai_compat.complete_once(self._http, request, config, timeout)
        elif provider_type in LITELLM_TYPES:
            if not litellm_provider.is_loaded():
                await self._load_litellm(deadline)
                started = time.monotonic()  # latency is the provider's, not the import's

            async def attempt(timeout: float) -> Completion:
                return await litellm_provider.complete_once(
                    messages, config, provider_type, timeout
                )
        else:
            raise LlmProviderError(f"unknown provider type {config.provider_type!r}")

        completion = await self._with_retries(attempt, start, deadline)
        return replace(completion, latency_ms=_ms_since(started))

    async def _with_retries(self, attempt, start: float, deadline: float) -> Completion:
        attempts = 0
        last: TransientError | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (attempts and remaining < _MIN_ATTEMPT_SECONDS):
                break
            per_attempt = min(self.timeout, remaining)
            attempts += 1
            try:
                async with asyncio.timeout(per_attempt):
                    return await attempt(per_attempt)
            except TimeoutError:
                last = TransientError("timed out", timed_out=True)
            except TransientError as exc:
                last = exc
            if attempts > self.max_retries:
                break
            if last.retry_after is not None:
                delay = last.retry_after
            else:
                delay = min(_MAX_BACKOFF_SECONDS, self.backoff_base * 2 ** (attempts - 1))
                delay *= random.uniform(0.5, 1.0)
            # A wait that would leave no time for another attempt: give up now, not later.
            if deadline - time.monotonic() - delay < _MIN_ATTEMPT_SECONDS:
                break
            await asyncio.sleep(delay)
        raise _final_error(last, start)

    async def _load_litellm(self, deadline: float) -> None:
        # The first import blocks for seconds: do it in a thread, within the total budget.
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await asyncio.to_thread(litellm_provider.load_litellm)
        except TimeoutError:
            raise LlmTimeoutError(
                f"timed out after {self.total_timeout:.1f}s (loading the provider library)"
            ) from None


def _final_error(last: TransientError | None, start: float) -> Exception:
    if last is None or last.timed_out:
        return LlmTimeoutError(f"timed out after {time.monotonic() - start:.1f}s")
    return LlmProviderError(last.reason, status_code=last.status_code, internal=last.internal)


def _ms_since(start: float) -> float:
    return (time.monotonic() - start) * 1000.0
