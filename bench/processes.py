"""The processes a run starts: children in their own process groups with a log file each, this
run's own PostgreSQL cluster, free ports, and waiting for a child to listen or answer."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from bench.common import HOST, PY, ROOT


class Proc:
    """A child in its own process group, with its output in a log file."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.started = time.perf_counter()
        self.popen = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.popen.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.popen.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        else:  # the leader is gone: make sure nothing of its group is left
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._log.close()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((HOST, port)) == 0


def free_pg_port(first: int = 54340, last: int = 54399) -> int:
    """The first port from 54340 on that nothing listens on (the tests' server is 54329)."""
    for port in range(first, last + 1):
        if not port_in_use(port):
            return port
    raise RuntimeError(f"no free port in {first}-{last} for this run's PostgreSQL")


def as_postgres(command: str) -> list[str]:
    if os.geteuid() == 0:
        return ["su", "postgres", "-s", "/bin/bash", "-c", f"PATH='{os.environ['PATH']}' {command}"]
    return ["bash", "-c", command]


class Postgres:
    def __init__(self, port: int, pgdata: str, database: str) -> None:
        self.port, self.pgdata, self.database = port, pgdata, database
        self.url = ""
        self.started = False

    def start(self) -> str:
        # Not PGDATABASE: start-postgres's own psql calls (no -d) would then connect to the
        # not-yet-created database. Its default name is fine on this run's own cluster.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env |= {"PGPORT": str(self.port), "PGDATA": self.pgdata}
        if port_in_use(self.port) and not Path(self.pgdata, "postmaster.pid").exists():
            raise RuntimeError(f"port {self.port} is taken by another server: choose --pgport")
        self.started = True  # from here on, stop() tries
        out = subprocess.run(
            [str(ROOT / ".ci" / "start-postgres")], env=env, capture_output=True, text=True,
            timeout=180,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"start-postgres failed: {out.stderr[-2000:]}")
        self.url = out.stdout.strip().splitlines()[-1]
        return self.url

    def psql(self, sql: str) -> str:
        out = subprocess.run(
            ["psql", "-h", HOST, "-p", str(self.port), "-U", "postgres", "-d", self.database,
             "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr.strip()}")
        return out.stdout.strip()

    def version(self) -> str:
        return self.psql("SHOW server_version")

    def postmaster_pid(self) -> int | None:
        try:
            return int(Path(self.pgdata, "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def log_path(self) -> Path:
        return Path(self.pgdata) / "server.log"

    def stop(self) -> None:
        if not self.started:
            return
        subprocess.run(
            as_postgres(f"pg_ctl -D '{self.pgdata}' stop -m fast"), capture_output=True,
            timeout=60,
        )  # fmt: skip
        shutil.rmtree(self.pgdata, ignore_errors=True)



def chatbots_cmd() -> list[str]:
    venv_bin = Path(PY).parent
    found = shutil.which("chatbots", path=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    return [found] if found else [PY, "-m", "app.cli"]


def wait_listening(proc: Proc, timeout: float = 20.0) -> int:
    """The port a child prints as ``LISTENING <port>`` in its log (the fake LLM does)."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        match = re.search(r"LISTENING (\d+)", proc.log_path.read_text(errors="replace"))
        if match:
            return int(match.group(1))
        if not proc.alive():
            break
        time.sleep(0.02)
    raise RuntimeError(f"{proc.name} did not start:\n{proc.tail()}")


def wait_healthz(port: int, proc: Proc, timeout: float = 30.0) -> float:
    """Seconds from the process's spawn to the first 200 from /healthz."""
    deadline = time.perf_counter() + timeout
    request = f"GET /healthz HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode()
    while time.perf_counter() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited during start-up:\n{proc.tail()}")
        try:
            with socket.create_connection((HOST, port), timeout=1.0) as sock:
                sock.sendall(request)
                head = sock.recv(64)
                if head.startswith(b"HTTP/1.1 200"):
                    return time.perf_counter() - proc.started
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"{proc.name} did not answer /healthz within {timeout}s:\n{proc.tail()}")
