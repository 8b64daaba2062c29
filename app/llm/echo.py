"""The offline ``echo`` provider: replies with the last user message. No network, no cost."""

from .base import Completion, Usage

ECHO_TYPE = "echo"
_ZERO_USAGE = Usage()


def echo_completion(messages: list[dict[str, str]]) -> Completion:
    text = ""
    for message in reversed(messages):
        if message.get("role") == "user":
            text = message.get("content") or ""
            break
    return Completion(text=text, usage=_ZERO_USAGE, model="echo", latency_ms=0.0)
