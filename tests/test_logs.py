"""Logs: one access line per request with its id, who asked (credential kind, team), route
template, status and duration; JSON or text; and no secret or message text at INFO. Through
the ASGI app with the real formatter on a handler of the root logger, as a server writes."""

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from app.config import Settings
from app.observability.logs import JsonFormatter, TextFormatter, log_format
from app.auth.web_sessions import SESSION_COOKIE
from tests.browser import PASSWORD, give_password, log_in, new_browser, post_login
from tests.oauth_helpers import bearer, user_tokens

TURN_ROUTE = "/channels/api/{experiment_id}/incoming_message"


class Captured:
    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def entries(self) -> list[dict]:  # type: ignore[type-arg]
        return [json.loads(line) for line in self.text.splitlines()]

    def access(self) -> list[dict]:  # type: ignore[type-arg]
        return [entry for entry in self.entries() if entry["logger"] == "chatbots.access"]


@pytest.fixture
def json_log() -> Iterator[Captured]:
    """Everything logged at INFO and above, formatted as ``CHATBOTS_LOG_FORMAT=json`` writes it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield Captured(stream)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def test_each_request_writes_one_access_line_with_id_principal_team_route_status_duration(client, world, json_log):
    r = await client.post(world.url, json={"message": "hi"}, headers=world.headers | {"X-Request-ID": "req-7f3a"})
    assert r.status_code == 200, r.text
    anonymous = await client.post(world.url, json={"message": "hi"})
    assert anonymous.status_code == 401
    [turn, refused] = json_log.access()
    assert turn["request_id"] == "req-7f3a" and turn["level"] == "INFO"
    assert (turn["method"], turn["route"], turn["status"]) == ("POST", TURN_ROUTE, 200)
    assert (turn["principal"], turn["team"]) == ("api_key", world.team.id)
    assert turn["duration_ms"] > 0 and turn["time"].endswith("+00:00")
    assert turn["message"] == f"POST {TURN_ROUTE} 200 {turn['duration_ms']:.1f} ms"
    assert refused["request_id"] == anonymous.headers["x-request-id"]
    assert (refused["status"], refused["principal"], refused["team"]) == (401, None, None)


async def test_probes_and_scrapes_write_no_access_line_at_info(client, json_log):
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await client.get(path)).status_code == 200
    assert json_log.access() == []


async def test_no_key_token_password_or_message_text_is_logged_at_info(app, client, db, world, json_log):
    message, secrets = "my card number is 4111 1111 1111 1111", []
    r = await client.post(world.url, json={"message": message}, headers=world.headers)
    assert r.status_code == 200, r.text
    reply = r.json()["response"]
    oauth_client, tokens = await user_tokens(app, db, world)  # an OAuth code flow and token exchange
    r = await client.post(world.url, json={"message": message}, headers=bearer(tokens["access_token"]))
    assert r.status_code == 200, r.text
    refreshed = await client.post("/o/token/", data=oauth_client.auth(
        {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}))  # fmt: skip
    assert refreshed.status_code == 200, refreshed.text
    await give_password(db, world.user)
    async with new_browser(app) as browser:
        await log_in(browser, world.user.email)  # a password login
        secrets.append(browser.cookies[SESSION_COOKIE])
    async with new_browser(app) as browser:
        await post_login(browser, world.user.email, "a wrong password")
    secrets += [world.key, world.key.split(".")[-1], oauth_client.secret, tokens["access_token"],
                tokens["refresh_token"], refreshed.json()["access_token"], PASSWORD, message, reply]  # fmt: skip
    logged = json_log.text
    assert len(json_log.access()) >= 6  # the lines were written, and none says too much
    for secret in secrets:
        assert secret and secret not in logged, secret


def test_json_lines_carry_the_records_fields_and_its_traceback():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info())
    record.fields = {"route": "/r", "status": 500}
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "failed here" and entry["level"] == "ERROR" and entry["logger"] == "x"
    assert (entry["route"], entry["status"]) == ("/r", 500)
    assert "ValueError: boom" in entry["exception"] and "\n" not in JsonFormatter().format(record)


def test_text_lines_put_the_fields_after_the_message():
    record = logging.LogRecord("chatbots.access", logging.INFO, __file__, 1, "POST /r 200 1.0 ms", (), None)
    record.fields = {"route": "/r", "status": 200, "principal": "api_key"}
    line = TextFormatter().format(record)
    assert line.endswith("INFO chatbots.access POST /r 200 1.0 ms [route=/r status=200 principal=api_key]")


@pytest.mark.parametrize(
    ("database_url", "configured", "expected"),
    [
        ("sqlite+aiosqlite:///./chatbots.db", None, "text"),  # the embedded default: a terminal
        ("postgresql+asyncpg://db/chatbots", None, "json"),  # a deployment: a log collector
        ("postgresql+asyncpg://db/chatbots", "text", "text"),
        ("sqlite+aiosqlite:///./chatbots.db", "json", "json"),
    ],
)
def test_log_format_defaults_to_json_outside_the_embedded_default(database_url, configured, expected):
    settings = Settings(database_url=database_url, log_format=configured, _env_file=None)
    assert log_format(settings) == expected
