"""The LLM layer against the fake OpenAI-compatible server on 127.0.0.1 (real HTTP, no mocks).

Each test makes its model string unique (``#<tag>``) so it can count the requests it caused.
The ``fake_llm`` fixture comes from tests/fake_llm_fixture.py (registered in conftest.py).
"""

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from app.llm import (
    OPENAI_COMPATIBLE_TYPES,
    PROVIDER_TYPES,
    Completion,
    LlmClient,
    LlmConfig,
    LlmError,
    LlmProviderError,
    LlmTimeoutError,
    Usage,
)
from app.llm.base import clean_reason, parse_retry_after
from app.llm.http import make_http_client
from app.llm.litellm_provider import route

ROOT = Path(__file__).resolve().parent.parent
USER = [{"role": "user", "content": "hello"}]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with make_http_client() as client:  # the app's own client
        yield client


def unique(model: str) -> str:
    return f"{model}#{uuid.uuid4().hex[:8]}"


def config(fake_llm, model: str, **kwargs) -> LlmConfig:
    kwargs.setdefault("api_base", fake_llm.base_url)
    provider_type = kwargs.pop("provider_type", "openai_compatible")
    return LlmConfig(provider_type=provider_type, model=model, **kwargs)


def seen(fake_llm, model: str) -> list[dict]:
    return [r for r in fake_llm.requests() if r.get("model") == model]


def via_litellm(fake_llm, model: str) -> LlmConfig:
    return LlmConfig("litellm", f"openai/{model}", api_key="sk-fake", api_base=fake_llm.base_url)


def client(http: aiohttp.ClientSession, **kwargs) -> LlmClient:
    kwargs.setdefault("timeout", 2.0)
    kwargs.setdefault("backoff_base", 0.01)
    return LlmClient(http, **kwargs)


async def test_success_usage_and_latency(http, fake_llm):
    model = unique("plain")
    result = await client(http).complete(USER, config(fake_llm, model))
    assert isinstance(result, Completion)
    assert result.text == "echo: hello"
    assert result.model == model
    assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens > 0
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
    assert 0 < result.latency_ms < 2000
    assert result.cost_usd is None


async def test_messages_parameters_and_auth_forwarded(http, fake_llm):
    model = unique("plain")
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second"},
    ]
    cfg = config(fake_llm, model, api_key="sk-test-123", temperature=0.2, max_tokens=55)
    result = await client(http).complete(messages, cfg)
    assert result.text == "echo: second"
    [record] = [r for r in fake_llm.requests(full=True) if r["body"].get("model") == model]
    assert record["path"] == "/v1/chat/completions"
    assert record["body"]["messages"] == messages
    assert record["body"]["temperature"] == 0.2
    assert record["body"]["max_tokens"] == 55
    assert record["headers"]["authorization"] == "Bearer sk-test-123"


async def test_no_auth_header_without_key(http, fake_llm):
    model = unique("plain")
    await client(http).complete(USER, config(fake_llm, model))
    [record] = [r for r in fake_llm.requests(full=True) if r["body"].get("model") == model]
    assert "authorization" not in record["headers"]


async def test_azure_deployment_path(http, fake_llm):
    model = f"deploy-{uuid.uuid4().hex[:8]}"
    cfg = config(
        fake_llm, model, provider_type="azure", api_base=fake_llm.url, api_key="az-key",
        extra={"api_version": "2024-06-01"},
    )
    assert (await client(http).complete(USER, cfg)).text == "echo: hello"
    [record] = [r for r in fake_llm.requests(full=True) if r["body"].get("model") == model]
    assert record["path"] == f"/openai/deployments/{model}/chat/completions"
    assert record["query"] == "api-version=2024-06-01"
    assert record["headers"]["api-key"] == "az-key"
    assert "authorization" not in record["headers"]


async def test_per_attempt_timeout(http, fake_llm):
    model = unique("hang")
    started = time.monotonic()
    with pytest.raises(LlmTimeoutError) as info:
        await client(http, timeout=0.3, max_retries=0).complete(USER, config(fake_llm, model))
    assert time.monotonic() - started < 1.0
    assert info.value.reason == "timed out after 0.3s"
    assert len(seen(fake_llm, model)) == 1


async def test_latency_within_timeout_succeeds(http, fake_llm):
    result = await client(http, timeout=1.0).complete(USER, config(fake_llm, unique("latency-150")))
    assert result.text == "echo: hello"
    assert result.latency_ms >= 150


async def test_500_retried_then_success(http, fake_llm):
    model = unique("flaky-2-500")
    result = await client(http, max_retries=2).complete(USER, config(fake_llm, model))
    assert result.text == "echo: hello"
    assert len(seen(fake_llm, model)) == 3


async def test_500_exhausted(http, fake_llm):
    model = unique("fail-500")
    with pytest.raises(LlmProviderError) as info:
        await client(http, max_retries=2).complete(USER, config(fake_llm, model))
    assert info.value.status_code == 500
    assert info.value.reason == "HTTP 500 from provider: fake failure 500"
    assert len(seen(fake_llm, model)) == 3


async def test_429_honours_retry_after(http, fake_llm):
    model = unique("flaky-1-429+retryafter-0.4")
    started = time.monotonic()
    result = await client(http, backoff_base=0.0).complete(USER, config(fake_llm, model))
    assert result.text == "echo: hello"
    assert time.monotonic() - started >= 0.4
    assert len(seen(fake_llm, model)) == 2


async def test_429_retry_after_zero_overrides_backoff(http, fake_llm):
    model = unique("flaky-1-429")  # the fake sends Retry-After: 0
    started = time.monotonic()
    await client(http, backoff_base=10.0).complete(USER, config(fake_llm, model))
    assert time.monotonic() - started < 1.0
    assert len(seen(fake_llm, model)) == 2


async def test_retry_after_beyond_budget_fails_at_once(http, fake_llm):
    model = unique("fail-429+retryafter-30")
    started = time.monotonic()
    with pytest.raises(LlmProviderError) as info:
        await client(http, total_timeout=3.0).complete(USER, config(fake_llm, model))
    assert time.monotonic() - started < 1.0
    assert info.value.status_code == 429
    assert len(seen(fake_llm, model)) == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_permanent_errors_not_retried(http, fake_llm, status):
    model = unique(f"fail-{status}")
    with pytest.raises(LlmProviderError) as info:
        await client(http, max_retries=3).complete(USER, config(fake_llm, model, api_key="sk-x"))
    assert info.value.status_code == status
    assert info.value.reason == f"HTTP {status} from provider: fake failure {status}"
    assert len(seen(fake_llm, model)) == 1


async def test_garbage_is_a_provider_error(http, fake_llm):
    model = unique("garbage")
    with pytest.raises(LlmProviderError) as info:
        await client(http).complete(USER, config(fake_llm, model))
    assert "not JSON" in info.value.reason
    assert len(seen(fake_llm, model)) == 1


async def test_total_timeout_bounds_timeouts(http, fake_llm):
    model = unique("hang")
    started = time.monotonic()
    with pytest.raises(LlmTimeoutError):
        await client(http, timeout=0.3, max_retries=10, total_timeout=0.8).complete(
            USER, config(fake_llm, model)
        )
    assert time.monotonic() - started < 1.1
    assert 2 <= len(seen(fake_llm, model)) <= 4


async def test_total_timeout_bounds_backoff(http, fake_llm):
    model = unique("fail-503")
    started = time.monotonic()
    with pytest.raises(LlmProviderError) as info:
        await client(http, max_retries=10, backoff_base=0.4, total_timeout=1.0).complete(
            USER, config(fake_llm, model)
        )
    assert time.monotonic() - started < 1.1
    assert info.value.status_code == 503
    assert 2 <= len(seen(fake_llm, model)) < 10


async def test_connection_refused_is_retried_then_fails(http):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again at once: nothing listens there
    cfg = LlmConfig("vllm", "m", api_base=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(LlmProviderError) as info:
        await client(http, max_retries=1).complete(USER, cfg)
    assert info.value.status_code is None
    assert "could not reach provider" in info.value.reason


async def test_configuration_errors(http):
    with pytest.raises(LlmProviderError, match="requires an api_base"):
        await client(http).complete(USER, LlmConfig("openai_compatible", "m"))
    with pytest.raises(LlmProviderError, match="unknown provider type"):
        await client(http).complete(USER, LlmConfig("nope", "m"))


async def test_echo_provider_is_offline():
    class Refusing(aiohttp.BaseConnector):
        async def _create_connection(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            raise AssertionError("echo must not use the network")

    async with aiohttp.ClientSession(connector=Refusing()) as offline:
        messages = [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "two"},
            {"role": "user", "content": "  three  "},
        ]
        result = await LlmClient(offline).complete(messages, LlmConfig("echo", "anything"))
    assert result.text == "  three  "
    assert result.usage == Usage()
    assert result.model == "echo"
    assert result.cost_usd is None


def test_provider_types():
    assert {"openai", "azure", "groq", "deepseek", "mistral", "openrouter", "together", "ollama",
            "vllm", "lmstudio", "openai_compatible"} <= OPENAI_COMPATIBLE_TYPES
    assert OPENAI_COMPATIBLE_TYPES <= PROVIDER_TYPES
    assert {"anthropic", "google", "bedrock", "vertex_ai", "litellm", "echo"} <= PROVIDER_TYPES
    assert issubclass(LlmProviderError, LlmError) and issubclass(LlmTimeoutError, LlmError)


def test_litellm_routes():
    claude = LlmConfig("anthropic", "claude-sonnet-4-6")
    assert route(claude, "anthropic") == "anthropic/claude-sonnet-4-6"
    assert route(LlmConfig("google", "gemini-2.5-flash"), "google") == "gemini/gemini-2.5-flash"
    assert route(LlmConfig("bedrock", "bedrock/x"), "bedrock") == "bedrock/x"
    assert route(LlmConfig("litellm", "openai/x"), "litellm") == "openai/x"


def test_secrets_never_in_reasons_or_repr():
    assert clean_reason("Incorrect API key provided: sk-abc123", "sk-abc123") == (
        "Incorrect API key provided: ***"
    )
    assert "sk-abc123" not in repr(LlmConfig("openai", "m", api_key="sk-abc123"))


def test_parse_retry_after():
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_importing_app_llm_does_not_import_litellm():
    code = "import app.llm, sys; assert 'litellm' not in sys.modules, 'litellm imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


async def test_litellm_path(http, fake_llm):
    """One litellm-routed provider against the fake: lazy import, success, classification."""
    llm = client(http, max_retries=1)
    ok = unique("plain")
    result = await llm.complete(USER, via_litellm(fake_llm, ok))
    assert "litellm" in sys.modules
    assert result.text == "echo: hello"
    assert result.usage.total_tokens > 0
    assert len(seen(fake_llm, ok)) == 1

    failing = unique("fail-500")
    with pytest.raises(LlmProviderError) as info:
        await llm.complete(USER, via_litellm(fake_llm, failing))
    assert info.value.status_code == 500
    assert "fake failure 500" in info.value.reason
    assert "sk-fake" not in info.value.reason
    assert len(seen(fake_llm, failing)) == 2  # retried once by our loop, not by litellm

    bad = unique("fail-401")
    with pytest.raises(LlmProviderError) as info:
        await llm.complete(USER, via_litellm(fake_llm, bad))
    assert info.value.status_code == 401
    assert len(seen(fake_llm, bad)) == 1

    hanging = unique("hang")
    quick = client(http, timeout=0.3, max_retries=0)
    started = time.monotonic()
    with pytest.raises(LlmTimeoutError):
        await quick.complete(USER, via_litellm(fake_llm, hanging))
    assert time.monotonic() - started < 1.0
