"""The browser walk-through in a real browser: Debian's chromium (headless, driven by playwright,
nothing downloaded) against a real ``chatbots serve``. A person logs in with the form (no
JavaScript of ours involved), lands on /docs, a script of the page calls incoming_message with
the ``csrftoken`` cookie's value in ``X-CSRFToken`` and cannot read the HttpOnly ``sessionid``,
then the person logs out with the button; a screenshot of the final page is saved under the
test's output folder (``tests/server.py`` ``output_dir``). Skipped only where chromium is absent (``.ci/run``
installs it)."""

import shutil

import pytest

from app.demo import DEMO_EMAIL
from tests.server import demo_with_password, output_dir

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PASSWORD = "browser walk-through"

# What a page script of this site does: the CSRF token from document.cookie into the header.
CHAT = """async ([chatbot, withHeader]) => {
  const token = document.cookie.split('; ').find(c => c.startsWith('csrftoken=')).split('=')[1];
  const headers = {'Content-Type': 'application/json'};
  if (withHeader) headers['X-CSRFToken'] = token;
  const r = await fetch(`/channels/api/${chatbot}/incoming_message`,
                        {method: 'POST', headers, body: JSON.stringify({message: 'Hello'})});
  return [r.status, await r.json()];
}"""


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed here")
def test_log_in_chat_and_log_out_in_a_real_browser(tmp_path, request):
    from playwright.sync_api import sync_playwright

    with demo_with_password(tmp_path, PASSWORD) as (base, chatbot):
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_context(java_script_enabled=True).new_page()
                page.goto(f"{base}/accounts/login")
                page.get_by_label("Email").fill(DEMO_EMAIL)
                page.get_by_label("Password").fill("wrong password")
                page.get_by_role("button", name="Log in").click()
                assert page.get_by_role("alert").inner_text().startswith("The email or password is not right")

                page.get_by_label("Password").fill(PASSWORD)
                page.get_by_role("button", name="Log in").click()
                page.wait_for_url(f"{base}/docs")
                assert "sessionid" not in page.evaluate("document.cookie")  # HttpOnly

                status, body = page.evaluate(CHAT, [chatbot, True])
                assert status == 200 and body["response"] == "Hello", body
                status, body = page.evaluate(CHAT, [chatbot, False])
                assert status == 403 and body["detail"].startswith("CSRF Failed:"), body

                page.goto(f"{base}/accounts/login")
                assert DEMO_EMAIL in page.get_by_role("region", name="You are logged in").inner_text()
                page.get_by_role("button", name="Log out").click()
                page.wait_for_url(f"{base}/accounts/login")
                status, body = page.evaluate(CHAT, [chatbot, True])
                assert status == 401, body
                page.screenshot(path=str(output_dir(request) / "login-page-after-logout.png"), full_page=True)
            finally:
                browser.close()
