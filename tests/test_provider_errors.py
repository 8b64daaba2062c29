"""SPEC §3.4: a 502/504 body says which provider failed (its type) and how (timed out,
connection refused, the HTTP status), never where it is: the host and port are in the log only.

Through the ASGI app against the fake OpenAI-compatible server (bench/fake_llm.py) on 127.0.0.1,
and a port nothing listens on."""

import logging
import socket

from app.llm.base import clean_reason
from tests.factories import make_world, unique

PREFIX = "The language model provider failed: openai_compatible: "


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again at once: nothing listens there


def assert_no_address(text: str, port: int) -> None:
    assert "127.0.0.1" not in text and str(port) not in text and "localhost" not in text, text


async def test_a_refused_connection_is_a_502_saying_so_without_host_or_port(client, db, settings, caplog):
    port = closed_port()
    world = await make_world(db, settings, api_base=f"http://127.0.0.1:{port}/v1")
    caplog.set_level(logging.WARNING, logger="app.services.replies")
    r = await client.post(world.url, json={"message": unique("refused")}, headers=world.headers)
    assert r.status_code == 502, r.text
    assert r.json()["detail"] == PREFIX + "could not reach provider: connection refused"
    assert_no_address(r.text, port)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert f"http://127.0.0.1:{port}" in logged  # the operator learns where
    assert "sk-test" not in logged  # never the provider's key


async def test_a_slow_provider_is_a_504_saying_it_timed_out(client, db, settings, fake_llm, app, monkeypatch):
    # The app's own LLM client, its timeouts shortened for this test (the suite's are 5 s / 8 s).
    monkeypatch.setattr(app.state.llm, "timeout", 0.3)
    monkeypatch.setattr(app.state.llm, "total_timeout", 0.5)
    world = await make_world(db, settings, api_base=fake_llm.base_url, model=f"latency-3000#{unique('slow')}")
    r = await client.post(world.url, json={"message": unique("slow")}, headers=world.headers)
    assert r.status_code == 504, r.text
    assert r.json()["detail"].startswith(PREFIX + "timed out after ")
    assert_no_address(r.text, fake_llm.port)


async def test_a_provider_500_is_a_502_with_its_status_and_message(client, db, settings, fake_llm):
    world = await make_world(db, settings, api_base=fake_llm.base_url, model="fail-500")
    r = await client.post(world.url, json={"message": unique("five hundred")}, headers=world.headers)
    assert r.status_code == 502, r.text
    assert r.json()["detail"] == PREFIX + "HTTP 500 from provider: fake failure 500"
    assert_no_address(r.text, fake_llm.port)


def test_addresses_in_a_provider_message_are_not_shown():
    message = (
        "upstream http://10.1.2.3:8000/v1/chat failed; also 10.1.2.3:8000, [fd00::1]:443, "
        "llm.internal:11434 and 192.168.0.7"
    )
    cleaned = clean_reason(message, api_key=None)
    assert cleaned == (
        "upstream <address> failed; also <address>, <address>, <address> and <address>"
    )
    assert clean_reason("model gpt-4.1 at 3:30 is busy", None) == "model gpt-4.1 at 3:30 is busy"
