"""End to end: the README's browser-session walk-through against a real ``chatbots serve``
(embedded default, in an empty folder), over real HTTP with uvicorn's own proxy-header handling:
set the demo user's password with the CLI, log in, chat with the cookie and the CSRF header,
log out."""

import httpx

from app.demo import DEMO_EMAIL
from tests.server import demo_with_password

PASSWORD = "walk-through password"


def _log_in(base: str, headers: dict[str, str]) -> httpx.Response:
    page = httpx.get(f"{base}/accounts/login", headers=headers)
    token = page.cookies["csrftoken"]
    form = {"csrfmiddlewaretoken": token, "email": DEMO_EMAIL, "password": PASSWORD}
    return httpx.post(f"{base}/accounts/login", data=form, headers=headers, cookies={"csrftoken": token})


def test_a_browser_session_on_a_real_server(tmp_path):
    with demo_with_password(tmp_path, PASSWORD) as (base, chatbot):
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
