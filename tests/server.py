"""A real ``chatbots serve`` process on the embedded default, for end-to-end and browser tests."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(cwd: Path, port: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATBOTS_")}
    env.pop("OPENAI_API_KEY", None)
    env.pop("ANTHROPIC_API_KEY", None)
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        cwd=cwd, env={**env, "PYTHONPATH": str(Path(__file__).parent.parent)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def wait_for_banner(proc: subprocess.Popen[str], port: int) -> list[str]:
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
