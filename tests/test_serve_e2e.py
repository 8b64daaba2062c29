"""End to end: ``chatbots serve`` on the embedded default, as a newcomer runs it.

A real server process in an empty folder (so ./chatbots.db is new), the banner's curl replayed
exactly as printed (URL, headers, body) over real HTTP, then a second start that reuses the demo
and prints no new key.
"""

import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(cwd: Path, port: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATBOTS_")}
    env.pop("OPENAI_API_KEY", None)
    env.pop("ANTHROPIC_API_KEY", None)
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        cwd=cwd, env={**env, "PYTHONPATH": str(Path(__file__).parent.parent)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _wait_for_banner(proc: subprocess.Popen[str], port: int) -> list[str]:
    """Read the banner lines until the curl line, then wait for /healthz."""
    lines: list[str] = []
    assert proc.stdout is not None
    while not any(line.startswith("curl ") for line in lines):
        line = proc.stdout.readline()
        if not line:
            raise AssertionError("server exited before printing its curl:\n" + "".join(lines))
        lines.append(line.rstrip("\n"))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return lines
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError("/healthz never answered")


def _replay(curl_line: str) -> httpx.Response:
    """Send the request a shell would send for this curl line (variables expanded)."""
    args = shlex.split(os.path.expandvars(curl_line))
    url = next(a for a in args if a.startswith("http://"))
    headers = dict(args[i + 1].split(": ", 1) for i, a in enumerate(args) if a == "-H")
    body = args[args.index("-d") + 1]
    assert args[args.index("-X") + 1] == "POST"
    return httpx.post(url, headers=headers, content=body, timeout=10)


def test_first_start_prints_a_curl_that_works_and_second_start_reuses_the_demo(tmp_path):
    port = _free_port()
    proc = _serve(tmp_path, port)
    try:
        banner = _wait_for_banner(proc, port)
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

    port = _free_port()
    proc = _serve(tmp_path, port)
    try:
        banner = _wait_for_banner(proc, port)
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
