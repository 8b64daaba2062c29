"""The ``fake_llm`` fixture: a fake OpenAI-compatible server on 127.0.0.1 for the whole session.

Register it with ``pytest_plugins = ["tests.fake_llm_fixture"]`` in tests/conftest.py (or import the
name into a test module). ``fake_llm.base_url`` is the ``api_base`` to configure
(``http://127.0.0.1:<port>/v1``); ``fake_llm.requests()`` lists the recorded request bodies (the
last 1000). Pick behaviours with the model name (see bench/fake_llm.py), e.g. ``fail-500``,
``flaky-1-429#my-test``, ``latency-300``, ``hang``, ``garbage``.
"""

from collections.abc import Iterator

import pytest

from bench.fake_llm import FakeLlmServer


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[FakeLlmServer]:
    server = FakeLlmServer(latency_ms=0).start()
    try:
        yield server
    finally:
        server.stop()
