"""The five credentials of SPEC §4 on the three Chatbots v1 endpoints, side by side (issue 8):
an OAuth access token, an API key as `X-api-key` and as `Authorization: Bearer`, a widget's
embed key, a logged-in browser's session cookie (with its CSRF header). Each is what a real
client sends (the token from the code flow with PKCE, the key made as the CLI makes it, the
widget made by create_channel, the session started as the login page starts it), and each
answers as the SPEC's table says: every one may chat on both incoming_message routes;
trigger_bot takes all but the embed key (403: a widget's public key may only chat)."""

import secrets
from datetime import timedelta
from typing import Any

import pytest

from app.auth.csrf import CSRF_COOKIE, CSRF_HEADER
from app.auth.web_sessions import SESSION_COOKIE, start_session
from app.db import utcnow
from tests.assertions import assert_error
from tests.factories import add_widget
from tests.oauth_helpers import add_api_channel, trigger_body, user_tokens

CREDENTIALS = ("oauth", "x-api-key", "bearer-api-key", "embed-key", "session-cookie")
FORBIDDEN = {"detail": "You do not have permission to perform this action."}
PAGE = "https://app.example.com"


async def credential(kind: str, app: Any, db: Any, settings: Any, world: Any) -> tuple[dict[str, str], dict[str, str]]:
    """The headers and cookies a client of ``kind`` sends."""
    if kind == "oauth":
        _, tokens = await user_tokens(app, db, world, public=True)
        return {"Authorization": f"Bearer {tokens['access_token']}"}, {}
    if kind == "x-api-key":
        return {"X-api-key": world.key}, {}
    if kind == "bearer-api-key":
        return {"Authorization": f"Bearer {world.key}"}, {}
    if kind == "embed-key":
        widget = await add_widget(db, settings, world, "app.example.com")
        return {"X-Embed-Key": widget.key, "Origin": PAGE}, {}
    raw = await start_session(app.state.runtime.store, world.user.id, world.team.id, utcnow(), timedelta(hours=1))
    csrf = secrets.token_urlsafe(32)
    return {CSRF_HEADER: csrf}, {SESSION_COOKIE: raw, CSRF_COOKIE: csrf}


@pytest.mark.parametrize("kind", CREDENTIALS)
async def test_every_credential_chats_on_both_incoming_message_routes(app, client, db, settings, world, kind):
    headers, cookies = await credential(kind, app, db, settings, world)
    client.cookies.clear()
    for name, value in cookies.items():
        client.cookies.set(name, value)
    try:
        for url in (world.url, world.version_url(0)):
            r = await client.post(url, json={"message": f"hello by {kind}"}, headers=headers)
            assert r.status_code == 200, (url, r.text)
            assert r.json()["response"] == f"echo: hello by {kind}"
    finally:
        client.cookies.clear()


@pytest.mark.parametrize("kind", CREDENTIALS)
async def test_trigger_bot_takes_every_credential_but_the_embed_key(app, client, db, settings, world, kind):
    await add_api_channel(db, world)
    headers, cookies = await credential(kind, app, db, settings, world)
    client.cookies.clear()
    for name, value in cookies.items():
        client.cookies.set(name, value)
    try:
        r = await client.post("/api/trigger_bot", json=trigger_body(world), headers=headers)
    finally:
        client.cookies.clear()
    if kind == "embed-key":
        assert_error(r, 403, FORBIDDEN)
    else:
        assert r.status_code == 200, r.text
        assert set(r.json()) == {"session_id", "channel", "delivery_id"}
