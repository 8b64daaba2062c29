"""/docs really authorizes (SPEC §4.4, issue 8): in Debian's chromium (headless, driven by
playwright, nothing downloaded) against a real ``chatbots serve`` on the embedded default, a
person opens /docs, clicks Authorize, runs the OAuth2 authorization-code flow with PKCE through
the demo's public /docs client (the popup: log in, approve), and calls incoming_message from
Swagger UI with the token, seeing the bot's reply. A screenshot of the final page is saved under
the test's output folder. Skipped only where chromium is absent (``.ci/run`` installs it)."""

import json
import re
import shutil

import pytest

from app.demo import DEMO_EMAIL
from tests.server import demo_with_password, output_dir

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PASSWORD = "docs walk-through"
TIMEOUT_MS = 20_000


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed here")
def test_docs_authorize_with_pkce_then_call_incoming_message_from_swagger_ui(tmp_path, request):
    from playwright.sync_api import expect, sync_playwright

    out = output_dir(request)
    with demo_with_password(tmp_path, PASSWORD) as (base, chatbot):
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                context = browser.new_context()
                context.set_default_timeout(TIMEOUT_MS)
                page = context.new_page()
                page.goto(f"{base}/docs")
                page.locator(".btn.authorize").first.click()  # the page's Authorize button
                dialog = page.locator(".modal-ux")
                oauth = dialog.locator(".auth-container", has_text="authorizationCode with PKCE")
                expect(oauth.locator("#client_id_authorizationCode")).to_have_value("chatbots-docs")
                expect(oauth.get_by_label("chatbots:interact")).to_be_checked()
                with page.expect_popup() as opened:
                    oauth.get_by_role("button", name="Apply given OAuth2 credentials").click()
                popup = opened.value
                # Not logged in: the authorization endpoint sends the popup to the login page.
                popup.wait_for_url(re.compile(r"/accounts/login\?next="))
                popup.get_by_label("Email").fill(DEMO_EMAIL)
                popup.get_by_label("Password").fill(PASSWORD)
                popup.get_by_role("button", name="Log in").click()
                popup.wait_for_url(re.compile(r"/o/authorize/\?"))
                assert "API docs (/docs)" in popup.content()
                popup.get_by_role("button", name="Approve").click()
                popup.wait_for_event("close")  # Swagger UI's redirect page hands the code back
                expect(oauth.get_by_text("Authorized", exact=True)).to_be_visible()
                expect(oauth.get_by_role("button", name="Remove authorization")).to_be_visible()  # "Logout"
                oauth.locator(".btn-done").click()

                operation = page.locator(".opblock", has_text="/channels/api/{experiment_id}/incoming_message").first
                operation.locator(".opblock-summary").click()
                operation.get_by_role("button", name="Try it out").click()
                operation.get_by_placeholder("experiment_id").fill(chatbot)
                operation.locator("textarea.body-param__text").fill(json.dumps({"message": "Hello from /docs"}))
                operation.get_by_role("button", name="Execute").click()
                answer = operation.locator(".live-responses-table .response-col_description .microlight").first
                expect(answer).to_contain_text("Hello from /docs")
                reply = json.loads(answer.inner_text())
                assert reply["response"] == "Hello from /docs" and reply["session_id"]
                # The request Swagger UI sent carried the OAuth access token, not a key.
                curl = operation.locator(".curl-command").inner_text()
                assert "Authorization: Bearer cbat_" in curl, curl
                page.screenshot(path=str(out / "docs-after-incoming-message.png"), full_page=True)
            finally:
                browser.close()
