"""A real ``chatbots serve`` process on the embedded default, for end-to-end and browser tests."""

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest


OUTPUT_ROOT = Path(os.environ.get("CHATBOTS_TEST_OUTPUT") or Path(__file__).parent.parent / "test-output")


def output_dir(request: "pytest.FixtureRequest") -> Path:
    """Where a test keeps what a person may want to look at afterwards (browser screenshots):
    ``test-output/<test name>/`` (``CHATBOTS_TEST_OUTPUT`` moves the root; git ignores it)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    path = OUTPUT_ROOT / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(
    cwd: Path, port: int, *, settings: dict[str, str] | None = None, workers: int = 1,
    log: Path | None = None,
) -> subprocess.Popen[str]:
    """``chatbots serve`` with only the given ``CHATBOTS_*`` settings (none: the embedded default).
    Its output is a pipe to read, or the file ``log`` (a server that logs a lot, e.g. a warning
    per 503, would stall on a pipe nobody reads)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATBOTS_")}
    env.pop("OPENAI_API_KEY", None)
    env.pop("ANTHROPIC_API_KEY", None)
    env.update({f"CHATBOTS_{name.upper()}": value for name, value in (settings or {}).items()})
    out = log.open("ab") if log else None  # the child keeps its own copy of the descriptor
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers", str(workers)],
            cwd=cwd, env={**env, "PYTHONPATH": str(Path(__file__).parent.parent)},
            stdout=out or subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    finally:
        if out is not None:
            out.close()


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


def set_password(cwd: Path, email: str, password: str) -> str:
    """``chatbots user set-password`` for the server in ``cwd`` (its ./chatbots.db), the
    password on standard input as an operator would pipe it; returns what it printed."""
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "user", "set-password", "--email", email],
        input=password + "\n", capture_output=True, text=True, cwd=cwd, timeout=60,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(Path(__file__).parent.parent)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


@contextmanager
def demo_with_password(cwd: Path, password: str) -> Iterator[tuple[str, str]]:
    """``chatbots serve`` on the embedded default in ``cwd``, its demo user given ``password``
    (the printed output checked for it): the base URL and the demo chatbot's id."""
    from app.demo import DEMO_EMAIL

    port = free_port()
    proc = serve(cwd, port)
    try:
        banner = wait_for_banner(proc, port)
        chatbot = next(line for line in banner if "Demo chatbot:" in line).split()[2]
        assert password not in set_password(cwd, DEMO_EMAIL, password)
        yield f"http://127.0.0.1:{port}", chatbot
    finally:
        proc.terminate()
        proc.wait(10)
