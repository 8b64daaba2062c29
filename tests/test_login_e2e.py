"""End to end: the README's browser-session walk-through against a real ``chatbots serve``
(embedded default, in an empty folder), over real HTTP with uvicorn's own proxy-header handling:
set the demo user's password with the CLI, log in, chat with the cookie and the CSRF header,
log out."""

import subprocess
import sys
from pathlib import Path

import httpx

from app.demo import DEMO_EMAIL
from tests.server import free_port, serve, wait_for_banner

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "walk-through password"


def _set_password(cwd: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "user", "set-password", "--email", DEMO_EMAIL],
        input=PASSWORD + "\n", capture_output=True, text=True, cwd=cwd, timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stdout + done.stderr


def _log_in(base: str, headers: dict[str, str]) -> httpx.Response:
    page = httpx.get(f"{base}/accounts/login", headers=headers)
    token = page.cookies["csrftoken"]
    form = {"csrfmiddlewaretoken": token, "email": DEMO_EMAIL, "password": PASSWORD}
    return httpx.post(f"{base}/accounts/login", data=form, headers=headers, cookies={"csrftoken": token})


def test_a_browser_session_on_a_real_server(tmp_path):
    port = free_port()
    proc = serve(tmp_path, port)
    try:
        banner = wait_for_banner(proc, port)
        chatbot = next(line for line in banner if "Demo chatbot:" in line).split()[2]
        _set_password(tmp_path)
        base = f"http://127.0.0.1:{port}"

        # A TLS proxy on this host (trusted by default) says https: the cookies are Secure.
        behind_tls = _log_in(base, {"X-Forwarded-Proto": "https"})
        assert behind_tls.status_code == 303, behind_tls.text
        assert all("; secure" in h.lower() for h in behind_tls.headers.get_list("set-cookie"))

        # Plain http: the same login works, without Secure, and the cookie chats.
        login = _log_in(base, {})
        assert login.status_code == 303 and login.headers["location"] == "/docs"
        assert not any("; secure" in h.lower() for h in login.headers.get_list("set-cookie"))
        cookies = {"sessionid": login.cookies["sessionid"], "csrftoken": login.cookies["csrftoken"]}
        url = f"{base}/channels/api/{chatbot}/incoming_message"
        chat = httpx.post(url, json={"message": "Hello"}, cookies=cookies,
                          headers={"X-CSRFToken": cookies["csrftoken"]}, timeout=10)  # fmt: skip
        assert chat.status_code == 200, chat.text
        refused = httpx.post(url, json={"message": "Hello"}, cookies=cookies, timeout=10)
        assert refused.status_code == 403 and refused.json()["detail"].startswith("CSRF Failed:")

        out = httpx.post(f"{base}/accounts/logout", cookies=cookies, headers={"X-CSRFToken": cookies["csrftoken"]})
        assert out.status_code == 303
        after = httpx.post(url, json={"message": "Hello"}, cookies=cookies,
                           headers={"X-CSRFToken": cookies["csrftoken"]}, timeout=10)  # fmt: skip
        assert after.status_code == 401 and after.json() == {"detail": "Invalid token."}
    finally:
        proc.terminate()
        proc.wait(10)
