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


def serve(
    cwd: Path, port: int, *, settings: dict[str, str] | None = None, workers: int = 1
) -> subprocess.Popen[str]:
    """``chatbots serve`` with only the given ``CHATBOTS_*`` settings (none: the embedded default)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATBOTS_")}
    env.pop("OPENAI_API_KEY", None)
    env.pop("ANTHROPIC_API_KEY", None)
    env.update({f"CHATBOTS_{name.upper()}": value for name, value in (settings or {}).items()})
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers", str(workers)],
        cwd=cwd, env={**env, "PYTHONPATH": str(Path(__file__).parent.parent)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def wait_until_healthy(port: int, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("/healthz never answered")


def wait_for_banner(proc: subprocess.Popen[str], port: int) -> list[str]:
    """Read the banner lines until the curl line, then wait for /healthz."""
    lines: list[str] = []
    assert proc.stdout is not None
    while not any(line.startswith("curl ") for line in lines):
        line = proc.stdout.readline()
        if not line:
            raise AssertionError("server exited before printing its curl:\n" + "".join(lines))
        lines.append(line.rstrip("\n"))
    wait_until_healthy(port)
    return lines


def start_worker(cwd: Path, log: Path, *, settings: dict[str, str]) -> subprocess.Popen[bytes]:
    """``chatbots worker`` with only the given ``CHATBOTS_*`` settings. Its output goes to ``log``
    (a file: a pipe nobody reads would fill up and stall the worker)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATBOTS_")}
    env.pop("OPENAI_API_KEY", None)
    env.pop("ANTHROPIC_API_KEY", None)
    env.update({f"CHATBOTS_{name.upper()}": value for name, value in settings.items()})
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker"],
            cwd=cwd, env={**env, "PYTHONPATH": str(Path(__file__).parent.parent)},
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
