"""Security headers (issue 9, item 6) through the ASGI app: nosniff everywhere, no-store on
the API's answers (they carry conversation text), CSP and frame denial on /docs and the pages,
HSTS only over https, Swagger UI not persisting credentials, CORS closed outside the widget.
The server banner is uvicorn's: ``test_real_server_sends_no_server_banner`` starts a real
``chatbots serve``."""

import re

import httpx
import pytest

from app.security_headers import HSTS, PAGE_CSP
from tests.factories import World
from tests.server import free_port, serve, wait_for_banner
from tests.test_trigger_bot import add_channel


@pytest.mark.parametrize("path", ["/healthz", "/openapi.json", "/docs", "/no/such/path", "/accounts/login"])
async def test_every_response_says_nosniff(client, path):
    r = await client.get(path)
    assert r.headers["x-content-type-options"] == "nosniff", path


async def test_error_responses_say_nosniff_too(client, world: World):
    r = await client.post(world.url, json={"message": 5}, headers=world.headers)
    assert r.status_code == 400 and r.headers["x-content-type-options"] == "nosniff"


async def test_a_reply_is_never_stored_by_a_cache(client, world: World):
    r = await client.post(world.url, json={"message": "hello"}, headers=world.headers)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"


async def test_a_delivery_status_is_never_stored_by_a_cache(client, db, settings, world: World):
    await add_channel(db, settings, world, "telegram")
    body = {"identifier": "2002", "platform": "telegram", "experiment": str(world.chatbot.public_id),
            "message_text": "Your appointment is tomorrow."}  # fmt: skip
    triggered = await client.post("/api/trigger_bot", json=body, headers=world.headers)
    assert triggered.status_code == 200 and triggered.headers["cache-control"] == "no-store"
    r = await client.get(f"/api/deliveries/{triggered.json()['delivery_id']}", headers=world.headers)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"


async def test_api_errors_are_not_stored_either(client, world: World):
    r = await client.post(world.url, json={"message": "hi"})
    assert r.status_code == 401 and r.headers["cache-control"] == "no-store"


async def test_docs_assets_stay_cacheable(client):
    r = await client.get("/docs/assets/swagger-ui.css")
    assert r.status_code == 200 and r.headers["cache-control"] == "public, max-age=86400"


def _script_nonces(html: str) -> list[str]:
    return re.findall(r'<script nonce="([^"]+)">', html)


@pytest.mark.parametrize("path", ["/docs", "/docs/oauth2-redirect"])
async def test_docs_pages_admit_only_their_own_inline_script_and_are_never_framed(client, path):
    first, second = await client.get(path), await client.get(path)
    assert first.status_code == 200
    [nonce] = _script_nonces(first.text)
    csp = first.headers["content-security-policy"]
    assert f"script-src 'self' 'nonce-{nonce}'" in csp and "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
    assert "frame-ancestors 'none'" in csp and first.headers["x-frame-options"] == "DENY"
    assert "<script>" not in first.text  # every inline script carries the nonce
    assert _script_nonces(second.text) != [nonce]  # a fresh nonce per response


async def test_login_page_has_a_csp_without_scripts_and_frame_denial(client):
    r = await client.get("/accounts/login")
    assert r.headers["content-security-policy"] == PAGE_CSP
    assert "script-src" not in PAGE_CSP and "default-src 'none'" in PAGE_CSP
    assert r.headers["x-frame-options"] == "DENY"


async def test_swagger_ui_does_not_persist_authorization(client):
    page = (await client.get("/docs")).text
    assert '"persistAuthorization": false' in page
    assert '"persistAuthorization": true' not in page


async def test_hsts_is_sent_over_https_only(app):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://test") as https:
        assert (await https.get("/healthz")).headers["strict-transport-security"] == HSTS
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        assert "strict-transport-security" not in (await http.get("/healthz")).headers


@pytest.mark.parametrize("path", ["/api/trigger_bot", "/openapi.json", "/o/token/", "/api/deliveries/x"])
async def test_cors_is_closed_outside_the_widget_endpoint(client, path):
    origin = {"Origin": "https://evil.example"}
    preflight = await client.options(path, headers={**origin, "Access-Control-Request-Method": "POST"})
    plain = await client.get(path, headers=origin)
    for r in (preflight, plain):
        assert not any(name.startswith("access-control-") for name in r.headers), (path, r.headers)


def test_real_server_sends_no_server_banner(tmp_path):
    port = free_port()
    proc = serve(tmp_path, port)
    try:
        wait_for_banner(proc, port)
        r = httpx.get(f"http://127.0.0.1:{port}/healthz")
        head = httpx.head(f"http://127.0.0.1:{port}/healthz")
    finally:
        proc.terminate()
        proc.wait(10)
    assert r.status_code == 200 and "server" not in r.headers
    assert r.headers["x-content-type-options"] == "nosniff"
    # HEAD over a real connection too (uvicorn sends no body for it either way).
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == r.headers["content-length"]
