"""The LLM layer (SPEC §5.4): ``await LlmClient(http).complete(messages, LlmConfig(...))``.

OpenAI-compatible providers use a plain HTTP (aiohttp) fast path; other providers go through litellm,
imported lazily on first use (importing this package never imports litellm); ``echo`` is offline.
"""

from .base import Completion, LlmConfig, LlmError, LlmProviderError, LlmTimeoutError, Usage
from .client import PROVIDER_TYPES, LlmClient
from .litellm_provider import LITELLM_TYPES
from .openai_compat import OPENAI_COMPATIBLE_TYPES

__all__ = [
    "Completion",
    "LITELLM_TYPES",
    "LlmClient",
    "LlmConfig",
    "LlmError",
    "LlmProviderError",
    "LlmTimeoutError",
    "OPENAI_COMPATIBLE_TYPES",
    "PROVIDER_TYPES",
    "Usage",
]
