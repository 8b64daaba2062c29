"""``HEAD`` answers wherever ``GET`` does (issue 9, item 7): the same status and headers, no
body; where there is no ``GET``, 405 with ``Allow``."""

import pytest

from tests.factories import World
from tests.test_trigger_bot import add_channel

PUBLIC_GETS = [
    "/healthz",
    "/readyz",
    "/docs",
    "/docs/oauth2-redirect",
    "/docs/assets/swagger-ui.css",
    "/docs/assets/swagger-ui-bundle.js",
    "/openapi.json",
    "/accounts/login",
    "/.well-known/oauth-authorization-server",
]
# Headers that differ between two responses whatever the method.
PER_RESPONSE = {"x-request-id", "date", "content-security-policy", "set-cookie", "content-length", "etag", "last-modified"}


def _comparable(headers) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {k: v for k, v in headers.items() if k not in PER_RESPONSE}


@pytest.mark.parametrize("path", PUBLIC_GETS)
async def test_head_answers_as_get_without_a_body(client, path):
    get, head = await client.get(path), await client.head(path)
    assert head.status_code == get.status_code == 200, path
    assert head.content == b""
    assert _comparable(head.headers) == _comparable(get.headers)


@pytest.mark.parametrize("path", ["/healthz", "/openapi.json", "/docs/assets/swagger-ui.css"])
async def test_head_declares_the_length_get_would_send(client, path):
    get, head = await client.get(path), await client.head(path)
    assert int(head.headers["content-length"]) == len(get.content)


async def test_head_on_a_delivery_needs_a_credential_and_answers_as_get(client, db, settings, world: World):
    await add_channel(db, settings, world, "telegram")
    body = {"identifier": "2002", "platform": "telegram", "experiment": str(world.chatbot.public_id),
            "message_text": "Hello."}  # fmt: skip
    delivery = (await client.post("/api/trigger_bot", json=body, headers=world.headers)).json()["delivery_id"]
    path = f"/api/deliveries/{delivery}"
    head = await client.head(path, headers=world.headers)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == "application/json"
    anonymous = await client.head(path)
    assert anonymous.status_code == 401 and anonymous.content == b""
    assert anonymous.headers["www-authenticate"] == 'Bearer realm="api"'


async def test_head_where_there_is_no_get_is_405_with_allow(client, world: World):
    r = await client.head(world.url, headers=world.headers)
    assert r.status_code == 405 and r.headers["allow"] == "POST" and r.content == b""


async def test_head_of_an_unknown_path_is_404(client):
    r = await client.head("/no/such/path")
    assert r.status_code == 404 and r.content == b""
