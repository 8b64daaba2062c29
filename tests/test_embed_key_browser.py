"""The README's widget page in a real browser (Debian's chromium, headless, driven by
playwright) against a real
``chatbots serve`` on the embedded default: the CORS preflight, the embed key and the
conversation it continues, from an allowed origin; the browser's refusal from another port.
Skipped only where chromium is absent (``.ci/run`` installs it)."""

import contextlib
import functools
import http.server
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import free_port, serve, wait_for_banner

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
README = Path(__file__).parent.parent / "README.md"
# Drives the README's page as a visitor would: a message and, once it is answered, another. (The
# embedded default's demo chatbot runs the offline echo model: it repeats the message.)
VISITOR = """<script>
  window.onunhandledrejection = (e) => { document.getElementById("log").textContent += "blocked: " + e.reason + "\\n"; };
  const say = (text) => { document.getElementById("q").value = text; document.getElementById("send").click(); };
  say("hello widget");
  const next = setInterval(() => {
    const log = document.getElementById("log").textContent;
    if (log) clearInterval(next);
    if (log === "hello widget\\n") say("and again");
  }, 50);
</script>
"""


def readme_widget() -> str:
    [page] = re.findall(r"```html\n(.*?)```", README.read_text(), flags=re.S)
    return page


@contextlib.contextmanager
def static_site(root: Path, port: int) -> Iterator[None]:
    """A plain web server for the page, on its own origin (another port than the API's)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def cli(cwd: Path, *args: str) -> dict[str, object]:
    """A ``chatbots`` command on the served embedded database (same folder, no CHATBOTS_*)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATBOTS_")}
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", *args, "--json"], cwd=cwd, capture_output=True, text=True,
        env={**env, "PYTHONPATH": str(Path(__file__).parent.parent)}, timeout=60, check=True,
    )  # fmt: skip
    return json.loads(done.stdout)


def visit(pages: list[str]) -> list[str]:
    """Each page's conversation log, once the visitor is done (two answers, or a refusal)."""
    from playwright.sync_api import sync_playwright

    logs = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            for url in pages:
                page = browser.new_page()
                page.goto(url)
                page.wait_for_function(
                    "(t => t.includes('blocked') || t.split('\\n').length > 2)"
                    "(document.getElementById('log').textContent)", timeout=30_000,
                )  # fmt: skip
                logs.append(page.inner_text("#log"))
                page.close()
        finally:
            browser.close()
    return logs


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed here")
def test_the_readme_widget_chats_from_an_allowed_page_and_is_refused_from_another(tmp_path: Path) -> None:
    api_port, page_port, other_port = free_port(), free_port(), free_port()
    proc = serve(tmp_path, api_port)
    try:
        banner = "\n".join(wait_for_banner(proc, api_port))
        [chatbot] = set(re.findall(r"/channels/api/([0-9a-f-]{36})/incoming_message", banner))
        widget = cli(tmp_path, "channel", "create", "--chatbot", chatbot, "--platform", "embedded_widget",
                     "--config", f"allowed_domains=127.0.0.1:{page_port}")  # fmt: skip
        site = tmp_path / "site"
        site.mkdir()
        page = (
            readme_widget()
            .replace("https://chat.example.net", f"http://127.0.0.1:{api_port}")
            .replace("CHATBOT_ID", chatbot)
            .replace("EMBED_KEY", str(widget["widget_token"]))
        )
        (site / "index.html").write_text(f"<!doctype html><html><body>{page}{VISITOR}</body></html>")
        with static_site(site, page_port), static_site(site, other_port):
            allowed, refused = visit([f"http://127.0.0.1:{port}/index.html" for port in (page_port, other_port)])
    finally:
        proc.terminate()
        proc.wait(10)

    assert allowed.splitlines() == ["hello widget", "and again"], allowed
    assert refused.startswith("blocked: TypeError"), refused  # the preflight was refused
    # Both messages in one conversation of one anonymous visitor, on the widget's channel.
    with contextlib.closing(sqlite3.connect(tmp_path / "chatbots.db")) as db:
        rows = db.execute(
            "SELECT s.external_id, p.identifier, m.content FROM chat_message m "
            "JOIN chat_session s ON s.id = m.session_id JOIN participant p ON p.id = s.participant_id "
            "WHERE s.channel_id = ? ORDER BY m.id", (widget["id"],),
        ).fetchall()  # fmt: skip
    assert [content for *_, content in rows] == ["hello widget"] * 2 + ["and again"] * 2
    assert len({(session, who) for session, who, _ in rows}) == 1 and rows[0][1].startswith("anon:")
