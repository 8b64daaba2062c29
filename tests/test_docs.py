"""/docs: Swagger UI served from this service's own assets, rendered by a real browser.

The browser test runs Debian's chromium headless against a real server process; `.ci/run`
installs chromium, and the test is skipped only where it is absent (a laptop without it).
"""

import shutil
import subprocess

import pytest

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
    missing = await client.get("/docs/assets/../../etc/passwd")
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/json"


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
    assert {"400", "401", "403", "404", "405", "413", "415", "502", "503", "504"} <= set(plain["responses"])
    assert "422" not in plain["responses"]
    assert doc["components"]["securitySchemes"] == {
        "apiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-api-key"},
        "tokenAuth": {"type": "http", "scheme": "bearer"},
    }
    assert plain["security"] == [{"apiKeyAuth": []}, {"tokenAuth": []}]
    # Trailing-slash aliases work but are not in the schema.
    assert not any(path.endswith("/") for path in paths)
