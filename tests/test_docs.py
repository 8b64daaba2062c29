"""/docs: Swagger UI served from this service's own assets, rendered by a real browser.

The browser test runs Debian's chromium headless against a real server process; `.ci/run`
installs chromium, and the test is skipped only where it is absent (a laptop without it).
"""

import asyncio
import json
import shutil
import subprocess
from urllib.parse import unquote

import httpx
import pytest

from app.auth.scopes import SCOPES
from tests.server import free_port, serve, wait_for_banner


async def test_docs_page_uses_local_assets(client):
    page = await client.get("/docs")
    assert page.status_code == 200
    assert "/docs/assets/swagger-ui-bundle.js" in page.text
    assert "cdn." not in page.text  # nothing fetched from a CDN
    for name, kind in [("swagger-ui-bundle.js", "javascript"), ("swagger-ui.css", "css")]:
        asset = await client.get(f"/docs/assets/{name}")
        assert asset.status_code == 200 and kind in asset.headers["content-type"]
        assert len(asset.content) > 10_000


def test_a_client_library_cannot_send_the_traversal():
    """Why the next test builds its requests itself: httpx (like browsers) resolves dot
    segments before sending, so a request through it asks for /etc/passwd, never for a path
    that climbs out of /docs/assets."""
    assert httpx.URL("http://test/docs/assets/../../etc/passwd").raw_path == b"/etc/passwd"


UP = 20  # more levels than the assets folder has above it: every attempt reaches /etc/passwd


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/docs/assets/" + b"../" * UP + b"etc/passwd",
        b"/docs/assets/" + b"..%2F" * UP + b"etc%2Fpasswd",  # the server decodes %2F in scope["path"]
        b"/docs/assets/" + b"%2E%2E%2F" * UP + b"etc%2Fpasswd",
        b"/docs/assets/swagger-ui.css/" + b"../" * UP + b"etc/passwd",
        b"/docs/assets/..",
    ],
    ids=["dot-segments", "encoded-slashes", "encoded-dots", "after-an-asset", "parent"],
)
async def test_docs_assets_refuse_path_traversal(app, raw_path):
    """Sent as a server would pass it on: decoded (``%2F`` is a ``/``), not normalised."""
    seen: dict[str, object] = {}

    async def recording(scope, receive, send):  # type: ignore[no-untyped-def]
        seen.update(path=scope["path"], raw_path=scope["raw_path"])
        await app(scope, receive, send)

    status, headers, body = await _raw_get(recording, raw_path)
    # The request reached the app un-normalised, dot segments and all.
    assert seen == {"path": unquote(raw_path.decode()), "raw_path": raw_path}
    assert "/.." in str(seen["path"])
    assert status == 404 and headers["content-type"] == "application/json", (status, body)
    assert set(json.loads(body)) == {"detail"}
    assert b"root:" not in body


async def _raw_get(app, raw_path: bytes) -> tuple[int, dict[str, str], bytes]:  # type: ignore[no-untyped-def]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": unquote(raw_path.decode()), "raw_path": raw_path,
        "query_string": b"", "root_path": "", "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 50000), "server": ("test", 80), "state": {},
    }  # fmt: skip
    sent: list[dict] = []  # type: ignore[type-arg]
    requested, answered = False, asyncio.Event()

    async def receive() -> dict:  # type: ignore[type-arg]
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await answered.wait()  # as a server does: nothing more until the client goes away
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:  # type: ignore[type-arg]
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            answered.set()

    await app(scope, receive, send)
    headers = {name.decode(): value.decode() for name, value in sent[0]["headers"]}
    return sent[0]["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed here")
def test_swagger_ui_renders_the_seed_operations_in_a_real_browser(tmp_path):
    port = free_port()
    proc = serve(tmp_path, port)
    try:
        wait_for_banner(proc, port)
        dom = subprocess.run(
            [
                CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", f"--user-data-dir={tmp_path / 'chromium'}",
                "--virtual-time-budget=15000", "--dump-dom", f"http://127.0.0.1:{port}/docs",
            ],
            capture_output=True, text=True, timeout=90, check=True,
        ).stdout  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(10)
    # Rendered by Swagger UI's JavaScript from /openapi.json: the seed's summaries, paths, the
    # Channels tag and the Authorize button for the security schemes.
    for text in ("New API Message", "New API Message Versioned", "/channels/api/{experiment_id}/incoming_message",
                 "Channels", "Authorize"):  # fmt: skip
        assert text in dom, text


async def test_openapi_declares_the_seed_names_and_only_working_schemes(client):
    doc = (await client.get("/openapi.json")).json()
    paths = doc["paths"]
    plain = paths["/channels/api/{experiment_id}/incoming_message"]["post"]
    pinned = paths["/channels/api/{experiment_id}/v{version}/incoming_message"]["post"]
    assert (plain["summary"], pinned["summary"]) == ("New API Message", "New API Message Versioned")
    assert plain["tags"] == pinned["tags"] == ["Channels"]
    body_ref = plain["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body_ref == "#/components/schemas/ApiMessage"
    schemas = doc["components"]["schemas"]
    assert {"ApiMessage", "ApiResponseMessage", "ApiResponseAttachment"} <= set(schemas)
    assert set(schemas["ApiResponseMessage"]["required"]) == {"response", "attachments", "session_id"}
    assert {"400", "401", "403", "404", "405", "408", "409", "413", "415", "502", "503", "504"} <= set(plain["responses"])
    assert "422" not in plain["responses"]
    assert doc["components"]["securitySchemes"] == {
        "OAuth2": {"type": "oauth2", "flows": {"authorizationCode": {
            "authorizationUrl": "/o/authorize/", "tokenUrl": "/o/token/", "refreshUrl": "/o/token/",
            "scopes": SCOPES}}},
        "apiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-api-key"},
        "embedKeyAuth": {"type": "apiKey", "in": "header", "name": "X-Embed-Key"},
        "tokenAuth": {"type": "http", "scheme": "bearer"},
        "cookieAuth": {"type": "apiKey", "in": "cookie", "name": "sessionid"},
    }  # fmt: skip
    # In the order credentials are resolved (SPEC §4): Bearer (an OAuth token first), X-api-key,
    # X-Embed-Key, the cookie.
    assert plain["security"] == [{"OAuth2": ["chatbots:interact"]}, {"tokenAuth": []}, {"apiKeyAuth": []},
                                 {"embedKeyAuth": []}, {"cookieAuth": []}]  # fmt: skip
    # Trailing-slash aliases work but are not in the schema (the OAuth2 endpoints' own paths end
    # in a slash, SPEC §4.4: their alias is the path without it).
    assert not any(path.endswith("/") for path in paths if not path.startswith("/o/"))
    assert not any(path.rstrip("/") in paths for path in paths if path.endswith("/"))
