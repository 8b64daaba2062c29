"""End to end: ``chatbots serve`` on the embedded default, as a newcomer runs it.

A real server process in an empty folder (so ./chatbots.db is new), the banner's curl replayed
exactly as printed (URL, headers, body) over real HTTP, then a second start that reuses the demo
and prints no new key.
"""

import os
import shlex

import httpx

from tests.server import free_port, serve, wait_for_banner


def _replay(curl_line: str) -> httpx.Response:
    """Send the request a shell would send for this curl line (variables expanded)."""
    args = shlex.split(os.path.expandvars(curl_line))
    url = next(a for a in args if a.startswith("http://"))
    headers = dict(args[i + 1].split(": ", 1) for i, a in enumerate(args) if a == "-H")
    body = args[args.index("-d") + 1]
    assert args[args.index("-X") + 1] == "POST"
    return httpx.post(url, headers=headers, content=body, timeout=10)


def test_first_start_prints_a_curl_that_works_and_second_start_reuses_the_demo(tmp_path):
    port = free_port()
    proc = serve(tmp_path, port)
    try:
        banner = wait_for_banner(proc, port)
        curl = next(line for line in banner if line.startswith("curl "))
        assert f"http://127.0.0.1:{port}/channels/api/" in curl
        key_lines = [line for line in banner if "Demo API key" in line]
        assert len(key_lines) == 1
        key = key_lines[0].rsplit(" ", 1)[1]

        reply = _replay(curl)
        assert reply.status_code == 200, reply.text
        assert reply.json()["response"] == "Hello!"  # the echo model
        assert reply.json()["session_id"]
    finally:
        proc.terminate()
        proc.wait(10)
    assert (tmp_path / "chatbots.db").exists()

    port = free_port()
    proc = serve(tmp_path, port)
    try:
        banner = wait_for_banner(proc, port)
        assert not any("Demo API key" in line for line in banner)
        curl = next(line for line in banner if line.startswith("curl "))
        assert "$CHATBOTS_DEMO_KEY" in curl
        os.environ["CHATBOTS_DEMO_KEY"] = key
        try:
            reply = _replay(curl)
        finally:
            del os.environ["CHATBOTS_DEMO_KEY"]
        assert reply.status_code == 200, reply.text
    finally:
        proc.terminate()
        proc.wait(10)
