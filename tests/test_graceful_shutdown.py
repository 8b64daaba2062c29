"""SIGTERM to a real ``chatbots serve`` on the database under test while a slow turn is in
flight (the fake LLM answers after 1.5 s): the turn still gets its 200, new connections are
refused, and the process exits 0 after it; its log is JSON lines, the turn's access line among
them."""

import json
import signal
import threading
import time
import uuid

import httpx

from tests.factories import make_world
from tests.server import free_port, serve, wait_until_healthy


async def test_sigterm_lets_the_request_in_flight_finish_and_exits_0(tmp_path, db, settings, fake_llm):
    model = f"latency-1500#shutdown-{uuid.uuid4().hex[:8]}"
    world = await make_world(db, settings, api_base=fake_llm.base_url, model=model)
    port = free_port()
    proc = serve(tmp_path, port, settings={
        "database_url": settings.database_url, "secret_key": settings.secret_key,
        "log_format": "json", "shutdown_timeout_seconds": "20",
    })  # fmt: skip
    try:
        wait_until_healthy(port)
        replies: list[httpx.Response] = []
        url = f"http://127.0.0.1:{port}{world.url}"
        turn = threading.Thread(target=lambda: replies.append(
            httpx.post(url, json={"message": "slow one"}, headers=world.headers, timeout=30)))  # fmt: skip
        turn.start()
        deadline = time.monotonic() + 10
        while not any(r.get("model") == model for r in fake_llm.requests()):  # the turn waits on the model
            assert time.monotonic() < deadline, "the turn never reached the model"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        try:
            refused = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code
        except httpx.TransportError:
            refused = None
        turn.join(20)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    [reply] = replies
    assert reply.status_code == 200, reply.text
    assert reply.json()["response"] == "echo: slow one"
    assert refused is None  # the listening socket closed at SIGTERM: nothing new is taken
    assert proc.stdout is not None
    entries = [json.loads(line) for line in proc.stdout.read().splitlines() if line.startswith("{")]
    access = [e for e in entries if e["logger"] == "chatbots.access" and e["route"].endswith("/incoming_message")]
    assert [(e["status"], e["principal"]) for e in access] == [(200, "api_key")]
    assert any(e["logger"].startswith("uvicorn") and "Shutting down" in e["message"] for e in entries)
