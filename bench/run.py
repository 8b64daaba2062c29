"""The benchmark: the service on PostgreSQL with ONE worker, against the fake LLM, and the floor.

    python bench/run.py            # the full run (about 5-8 minutes on 2 cores)
    python bench/run.py --quick    # a short smoke run (about 2 minutes)

What it does, stopping everything it started in the end (try/finally, process groups):

1. starts its own PostgreSQL (``.ci/start-postgres`` on the first free port from 54340, with a
   PGDATA of its own, removed at the end) and
   the fake LLM (``bench/fake_llm.py``, one process; per-request latency through the model names
   ``latency-0`` and ``latency-200``, which the floor uses too);
2. migrates and seeds with the ``chatbots`` CLI (team, provider, two published chatbots) and
   ``bench/seed.py`` (67 users, each with its own write API key: one participant per virtual
   client, so the per-session turn lease never serialises the load);
3. measures start-up: spawn ``chatbots serve --workers 1`` → first 200 from ``/healthz``;
4. on a fresh worker: 10,000 requests at concurrency 64 (LLM latency 0) sampling VmRSS/VmHWM
   from ``/proc/<pid>/status`` (peak, and growth from the 5,000th to the 10,000th request);
5. the matrix {LLM latency 0, 200 ms} × {concurrency 1, 16, 64} against ``incoming_message`` and
   the same matrix against the fake LLM alone (the floor): requests/s, p50/p95/p99, errors, peak
   RSS of the service and the CPU of each process;
6. history: one user's session gets 5,000 messages by a bulk INSERT; its p50 at concurrency 1
   vs a fresh user's (alternating rounds);
7. an SQL trace of single turns (PostgreSQL ``log_min_duration_statement=0``: statements and
   server time per turn), the client-side CPU of one statement by layer (``bench/dbmicro.py``:
   raw asyncpg vs SQLAlchemy Core vs ORM) and, when py-spy is found (PATH, the venv,
   ``$PY_SPY`` or /tmp/pyspy/bin), a CPU profile of the service under load;
8. prints the table and a PASS/FAIL line per target, writes ``bench/out/results-<ts>.json`` and
   ``bench/out/results-<ts>.md`` (markdown for ``bench/RESULTS.md``); logs in ``bench/out/run-<ts>/``.

All traffic goes to 127.0.0.1; every load phase is bounded in requests and seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.loadgen import Client, LoadResult, Request, install_uvloop, run_load  # noqa: E402
from bench.pyspy_summary import render as render_profile  # noqa: E402
from bench.pyspy_summary import summarise as summarise_profile  # noqa: E402

PY = sys.executable
HOST = "127.0.0.1"
TEAM = "bench"
N_LOAD_USERS = 64  # users 0..63: the virtual clients
HISTORY_USER, FRESH_USER, TRACE_USER = 64, 65, 66
N_USERS = 67
LATENCIES = (0, 200)
CONCURRENCIES = (1, 16, 64)
HISTORY_MESSAGES = 5000
SYSTEM_PROMPT = "You are a benchmark bot. Answer briefly."
CLK_TCK = os.sysconf("SC_CLK_TCK")

# A cell where the rest of the machine used more than this (% of one core) is marked as disturbed.
QUIET_OTHER_PCT = 20.0
DISTURBED_OTHER_PCT = 25.0

TARGET_ADDED_MS = 5.0
TARGET_RPS_0 = 400.0
TARGET_RPS_200 = 0.9 * 64 / 0.2  # 90 % of the ideal 320 req/s
TARGET_RSS_MB = 150.0
TARGET_RSS_GROWTH = 0.05
TARGET_STARTUP_S = 2.0
TARGET_HISTORY = 0.10


@dataclass
class Budget:
    cell_seconds: float
    cell_requests: int
    rss_requests: int
    rss_seconds: float
    history_rounds: int
    history_requests: int
    history_seconds: float
    startup_trials: int
    profile_seconds: float


FULL = Budget(15, 3000, 10_000, 240, 3, 300, 4, 3, 10)
QUICK = Budget(4, 600, 2_000, 40, 1, 150, 3, 1, 6)


def code_version() -> dict[str, Any]:
    """The commit measured, and whether the app's files differed from it."""
    commit = os.environ.get("BENCH_COMMIT")
    if commit:
        return {"commit": commit, "app_dirty": False, "source": os.environ.get("BENCH_SOURCE", "")}
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "app", "migrations"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "app_dirty": None, "source": "working tree"}
    return {"commit": rev or "unknown", "app_dirty": bool(dirty.strip()), "source": "working tree"}


def run_at_revision(rev: str, argv: list[str], child: list[str]) -> int:
    """Benchmark a committed revision while the working tree is being edited: export ``rev``
    (git archive) to a temporary directory, lay the current bench/ over it, run there, write
    the results to this checkout's bench/out/."""
    import tempfile

    commit = subprocess.run(["git", "rev-parse", rev], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()  # fmt: skip
    src = Path(tempfile.mkdtemp(prefix="chatbots-bench-src-"))
    try:
        archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True,
                                 check=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        for path in (ROOT / "bench").glob("*.py"):
            shutil.copy2(path, src / "bench" / path.name)
        env = os.environ | {
            "BENCH_COMMIT": commit,
            "BENCH_SOURCE": f"git archive {commit[:12]} + this checkout's bench/",
            "BENCH_OUT_DIR": str(ROOT / "bench" / "out"),
            "BENCH_COMMAND": "python bench/run.py " + " ".join(argv),
        }
        log(f"running bench/run.py on {commit[:12]} exported to {src}")
        return subprocess.run([PY, str(src / "bench" / "run.py"), *child], cwd=src, env=env).returncode
    finally:
        shutil.rmtree(src, ignore_errors=True)


def shown(path: Path) -> str:
    """A path as the reader would type it: relative to the checkout when the results land in
    its bench/out/ (also when running a ``--rev`` export), else absolute."""
    for base in (ROOT, Path(os.environ.get("BENCH_OUT_DIR", ROOT)).parent.parent):
        try:
            return str(path.relative_to(base))
        except ValueError:
            continue
    return str(path)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------
# processes


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


# ---------------------------------------------------------------------------------------------
# /proc sampling


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in kB (empty if the process is gone)."""
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    values[key] = int(value.split()[0])
    except OSError:
        pass
    return values


def _stat_fields(pid: int | str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(")") + 2 :].split()


def cpu_ticks(pid: int, reaped_children: bool = False) -> int:
    """utime + stime (+ cutime + cstime: the CPU of its children that have exited and been
    waited for, e.g. PostgreSQL backends whose connection the pool closed)."""
    fields = _stat_fields(pid)
    if not fields:
        return 0
    ticks = int(fields[11]) + int(fields[12])
    return ticks + int(fields[13]) + int(fields[14]) if reaped_children else ticks


def children_of(ppid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(entry)
            if fields and int(fields[1]) == ppid:
                found.append(int(entry))
    return found


def client_ports_to(port: int) -> set[int]:
    """Local ports of ESTABLISHED IPv4 connections whose remote port is ``port`` (from
    /proc/net/tcp): the client ends of connections to one server on this machine."""
    ports: set[int] = set()
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                parts = line.split(None, 4)
                if parts[3] == "01" and int(parts[2].rsplit(":", 1)[1], 16) == port:
                    ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    except (OSError, StopIteration, ValueError, IndexError):
        pass
    return ports


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return sum(parts) - idle, sum(parts)


class CpuMeter:
    """CPU used by the service, PostgreSQL (postmaster + backends), the fake LLM and this
    process (the load generator), and by the whole machine, between start() and stop()."""

    def __init__(self, service_pid: int | None, pg: Postgres, fake_pid: int) -> None:
        self.service_pid, self.pg, self.fake_pid = service_pid, pg, fake_pid

    def _snapshot(self) -> dict[str, int]:
        pg_total = 0
        master = self.pg.postmaster_pid()
        if master:
            pg_total = cpu_ticks(master, reaped_children=True) + sum(
                cpu_ticks(p) for p in children_of(master)
            )
        busy, total = machine_ticks()
        return {
            "service": cpu_ticks(self.service_pid) if self.service_pid else 0,
            "postgres": pg_total,
            "fake_llm": cpu_ticks(self.fake_pid),
            "loadgen": cpu_ticks(os.getpid()),
            "machine_busy": busy,
            "machine_total": total,
            "t": int(time.perf_counter() * 1_000_000),
        }

    def start(self) -> None:
        self._start = self._snapshot()

    def stop(self) -> dict[str, float]:
        end = self._snapshot()
        seconds = (end["t"] - self._start["t"]) / 1e6 or 1e-9
        pct = {
            k: round(100.0 * (end[k] - self._start[k]) / CLK_TCK / seconds, 1)
            for k in ("service", "postgres", "fake_llm", "loadgen")
        }
        total = end["machine_total"] - self._start["machine_total"] or 1
        cores = os.cpu_count() or 1
        pct["machine"] = round(100.0 * cores * (end["machine_busy"] - self._start["machine_busy"])
                               / total, 1)  # fmt: skip
        pct["other"] = round(pct["machine"] - sum(pct[k] for k in
                             ("service", "postgres", "fake_llm", "loadgen")), 1)  # fmt: skip
        return pct  # percent of ONE core (the machine has os.cpu_count() * 100 %)


# ---------------------------------------------------------------------------------------------
# small HTTP helpers


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


async def call_once(request: Request) -> tuple[int | str, bytes]:
    client = Client(request, timeout=30.0)
    try:
        return await client.call()
    finally:
        client.close()


# ---------------------------------------------------------------------------------------------
# the bench


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.budget = QUICK if args.quick else FULL
        self.ts = time.strftime("%Y%m%d-%H%M%S")
        self.out_dir = Path(os.environ.get("BENCH_OUT_DIR") or ROOT / "bench" / "out")
        self.run_dir = self.out_dir / f"run-{self.ts}"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[Proc] = []
        # Its own cluster, never another run's: a free port and a PGDATA of this process.
        # (start-postgres reuses a running cluster found at PGDATA and drops its database, so
        # two runs sharing a PGDATA would wreck each other.)
        port = args.pgport or free_pg_port()
        self.pg = Postgres(port, args.pgdata or f"/tmp/chatbots-bench-pg-{port}-{os.getpid()}",
                           "chatbots_test")  # fmt: skip
        self.results: dict[str, Any] = {
            "timestamp": self.ts,
            "command": os.environ.get("BENCH_COMMAND")
            or "python bench/run.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else ""),
            "mode": "quick" if args.quick else "full",
            "code": code_version(),
        }
        self.env: dict[str, str] = {}
        self.chatbots: dict[int, str] = {}  # LLM latency -> chatbot public id
        self.keys: list[str] = []
        self.fake: Proc | None = None
        self.fake_port = 0
        self.service: Proc | None = None
        self.service_port = 0

    # -- lifecycle ----------------------------------------------------------------------------
    def spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, cmd, env or self.env, self.run_dir / f"{name}.log")
        self.procs.append(proc)
        return proc

    def stop_proc(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def cleanup(self) -> None:
        for proc in reversed(self.procs):
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the others
                print(f"stopping {proc.name}: {exc}", file=sys.stderr)
        self.procs.clear()
        try:
            self.pg.stop()
        except Exception as exc:
            print(f"stopping PostgreSQL: {exc}", file=sys.stderr)

    def chatbots_cmd(self) -> list[str]:
        venv_bin = Path(PY).parent
        found = shutil.which("chatbots", path=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")
        return [found] if found else [PY, "-m", "app.cli"]

    def cli(self, *args: str) -> Any:
        out = subprocess.run(
            [*self.chatbots_cmd(), *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"chatbots {' '.join(args)} failed: {out.stderr.strip()[-2000:]}")
        return json.loads(out.stdout) if "--json" in args else out.stdout

    # -- set-up -------------------------------------------------------------------------------
    def setup(self) -> None:
        log(f"PostgreSQL on {HOST}:{self.pg.port} (PGDATA {self.pg.pgdata})")
        url = self.pg.start()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CHATBOTS_")}
        self.env |= {
            "CHATBOTS_DATABASE_URL": url,
            "CHATBOTS_SECRET_KEY": "bench-secret-key-not-secret",
            "CHATBOTS_LOG_LEVEL": "WARNING",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        self.fake = self.spawn("fake_llm", [PY, str(ROOT / "bench" / "fake_llm.py"), "--port", "0",
                                            "--latency-ms", "0"])  # fmt: skip
        self.fake_port = self._wait_listening(self.fake)
        log(f"fake LLM on {HOST}:{self.fake_port}")

        t0 = time.perf_counter()
        self.cli("db", "upgrade")
        self.cli("team", "create", "--slug", TEAM, "--name", "Benchmark team")
        self.cli("provider", "create", "--team", TEAM, "--name", "fake", "--type",
                 "openai_compatible", "--api-base", f"http://{HOST}:{self.fake_port}/v1",
                 "--api-key", "bench-fake-key", "--json")  # fmt: skip
        for latency in LATENCIES:
            head = self.cli("chatbot", "create", "--team", TEAM, "--name", f"bench {latency} ms",
                            "--provider", "fake", "--model", f"latency-{latency}",
                            "--system-prompt", SYSTEM_PROMPT, "--json")  # fmt: skip
            self.cli("chatbot", "publish", head["public_id"], "--json")
            self.chatbots[latency] = head["public_id"]
        seeded = subprocess.run(
            [PY, "-m", "bench.seed", "--team", TEAM, "--users", str(N_USERS)], cwd=ROOT,
            env=self.env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if seeded.returncode != 0:
            raise RuntimeError(f"bench.seed failed: {seeded.stderr[-2000:]}")
        self.keys = [u["key"] for u in json.loads(seeded.stdout)["users"]]
        log(f"migrated and seeded ({N_USERS} users with write keys, 2 chatbots) "
            f"in {time.perf_counter() - t0:.1f}s")  # fmt: skip

    def _wait_listening(self, proc: Proc, timeout: float = 20.0) -> int:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            match = re.search(r"LISTENING (\d+)", proc.log_path.read_text(errors="replace"))
            if match:
                return int(match.group(1))
            if not proc.alive():
                break
            time.sleep(0.02)
        raise RuntimeError(f"{proc.name} did not start:\n{proc.tail()}")

    def start_service(self, name: str = "service") -> tuple[Proc, int, float]:
        port = free_port()
        cmd = [*self.chatbots_cmd(), "serve", "--host", HOST, "--port", str(port), "--workers", "1"]
        proc = self.spawn(name, cmd)
        seconds = wait_healthz(port, proc)
        return proc, port, seconds

    def service_pid(self) -> int:
        """The worker: the spawned process itself (one worker runs in-process), or its only
        Python child if the server forked one."""
        assert self.service is not None
        kids = children_of(self.service.pid)
        return kids[0] if len(kids) == 1 else self.service.pid

    # -- request builders ---------------------------------------------------------------------
    def service_request(self, latency: int, user: int) -> Request:
        url = f"http://{HOST}:{self.service_port}/channels/api/{self.chatbots[latency]}/incoming_message"
        body = json.dumps({"message": f"hello from client {user}"})
        return Request.build("POST", url, {"X-api-key": self.keys[user]}, body, label=str(user))

    def floor_request(self, latency: int, user: int) -> Request:
        url = f"http://{HOST}:{self.fake_port}/v1/chat/completions"
        body = json.dumps({
            "model": f"latency-{latency}",
            "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                         {"role": "user", "content": f"hello from client {user}"}],
            "temperature": 0.7,
        })  # fmt: skip
        return Request.build("POST", url, {"Authorization": "Bearer bench-fake-key"}, body)

    # -- measuring ----------------------------------------------------------------------------
    async def measure(
        self,
        requests: list[Request],
        concurrency: int,
        total: int,
        duration: float,
        warmup: int,
        on_complete: Any = None,
    ) -> tuple[dict[str, Any], LoadResult]:
        pid = self.service_pid() if self.service else None
        meter = CpuMeter(pid, self.pg, self.fake.pid if self.fake else 0)
        waited = await self.wait_quiet(meter)
        pg_sessions_before = self.pg_sessions() if pid else None
        peak = {"rss_kb": 0}
        stop = asyncio.Event()
        # Connections the service opens to the LLM during the cell (a keep-alive pool that
        # works opens few). /proc/net/tcp costs milliseconds to read, so it is sampled once a
        # second: a connection per request would still show as dozens of new ports per sample.
        llm_port = self.fake_port
        llm_before = client_ports_to(llm_port) if pid else set()
        llm_seen: set[int] = set()

        async def sample() -> None:
            tick = 0
            while not stop.is_set():
                if pid:
                    peak["rss_kb"] = max(peak["rss_kb"], proc_status(pid).get("VmRSS", 0))
                    if tick % 10 == 0:
                        llm_seen.update(client_ports_to(llm_port))
                    tick += 1
                try:
                    await asyncio.wait_for(stop.wait(), 0.1)
                except TimeoutError:
                    pass

        sampler = asyncio.create_task(sample())
        try:
            result = await run_load(
                requests, concurrency=concurrency, total=total, duration=duration, warmup=warmup,
                on_complete=on_complete, on_measure_start=meter.start,
            )  # fmt: skip
        finally:
            stop.set()
            await sampler
        cpu = meter.stop()
        if pid:
            llm_seen.update(client_ports_to(llm_port))
        summary = result.summary()
        summary["cpu_pct_of_one_core"] = cpu
        summary["waited_for_quiet_s"] = waited
        if pid:
            summary["llm_connections_opened"] = len(llm_seen - llm_before)
            after = self.pg_sessions()
            if pg_sessions_before is not None and after is not None:
                # minus the psql session that read the second count
                summary["pg_connections_opened"] = after - pg_sessions_before - 1
        if pid and summary["requests"]:
            # CPU the service spent per request (ms): what bounds one worker's throughput.
            summary["service_cpu_ms_per_request"] = round(
                10.0 * cpu["service"] / (summary["requests"] / (summary["elapsed_s"] or 1e-9)), 2
            )
        if pid:
            status = proc_status(pid)
            summary["rss_peak_mb"] = round(peak["rss_kb"] / 1024, 1)
            summary["rss_end_mb"] = round(status.get("VmRSS", 0) / 1024, 1)
            summary["hwm_mb"] = round(status.get("VmHWM", 0) / 1024, 1)
        return summary, result

    def pg_sessions(self) -> int | None:
        """Sessions ever established to the benchmark database (pg_stat_database.sessions):
        the delta over a cell is how many connections the service's pool opened."""
        try:
            return int(self.pg.psql(
                "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
            ))  # fmt: skip
        except (RuntimeError, ValueError):
            return None

    async def wait_quiet(self, meter: CpuMeter) -> float:
        """The machine is shared: before a measurement, wait (bounded) until processes this
        run did not start use under QUIET_OTHER_PCT of a core for two 0.5 s windows."""
        limit = self.args.quiet_wait
        if limit <= 0:
            return 0.0
        start = time.perf_counter()
        calm = 0
        while time.perf_counter() - start < limit:
            meter.start()
            await asyncio.sleep(0.5)
            calm = calm + 1 if meter.stop()["other"] < QUIET_OTHER_PCT else 0
            if calm >= 2:
                break
        return round(time.perf_counter() - start, 1)

    def cell_warmup(self, concurrency: int) -> int:
        return 2 * concurrency + 5

    async def smoke(self) -> None:
        for latency in LATENCIES:
            status, body = await call_once(self.service_request(latency, TRACE_USER))
            if status != 200:
                raise RuntimeError(f"smoke request failed: {status} {body[:500]!r}")
            reply = json.loads(body)
            if not reply.get("response", "").startswith("echo: hello from client"):
                raise RuntimeError(f"unexpected reply: {reply}")
        log("smoke: both chatbots answer through the fake LLM")

    async def startup_and_rss(self) -> None:
        b = self.budget
        times = []
        for i in range(b.startup_trials - 1):  # extra spawns, stopped at once
            proc, _, seconds = self.start_service(f"service-startup-{i + 1}")
            self.stop_proc(proc)
            times.append(seconds)
            log(f"start-up trial {i + 1}: {seconds:.3f}s")
        self.service, self.service_port, seconds = self.start_service()
        times.append(seconds)
        log(f"start-up trial {len(times)}: {seconds:.3f}s (this worker runs the benchmark)")
        self.results["startup_s"] = {
            "trials": [round(t, 3) for t in times],
            "median": round(statistics.median(times), 3),
            "max": round(max(times), 3),
            "command": " ".join(["chatbots", "serve", "--host", HOST, "--port", "<free>",
                                 "--workers", "1"]),  # fmt: skip
        }
        pid = self.service_pid()
        idle = proc_status(pid)
        await self.smoke()

        # RSS: a fresh worker, n requests at concurrency 64, LLM latency 0.
        n = b.rss_requests
        marks: dict[int, int] = {}
        series: list[tuple[int, float]] = []

        def on_complete(count: int) -> None:
            if count % 500 == 0 or count in (n // 2, n):
                rss = proc_status(pid).get("VmRSS", 0)
                if count in (n // 2, n):
                    marks[count] = rss
                if count % 500 == 0:
                    series.append((count, round(rss / 1024, 1)))

        log(f"RSS run: {n} requests at concurrency 64 (LLM latency 0) ...")
        requests = [self.service_request(0, u) for u in range(N_LOAD_USERS)]
        summary, _ = await self.measure(requests, 64, n, b.rss_seconds, 64, on_complete)
        end = proc_status(pid)
        half = marks.get(n // 2, 0)
        full = marks.get(n, end.get("VmRSS", 0))
        self.results["rss_run"] = {
            "requests": summary["requests"],
            "planned_requests": n,
            "idle_rss_mb": round(idle.get("VmRSS", 0) / 1024, 1),
            "rss_at_half_mb": round(half / 1024, 1),
            "rss_at_end_mb": round(full / 1024, 1),
            "growth_pct": round(100.0 * (full - half) / half, 2) if half else None,
            "vmhwm_mb": round(end.get("VmHWM", 0) / 1024, 1),
            "series_mb": series,
            "load": summary,
        }
        r = self.results["rss_run"]
        log(f"RSS run: {summary['requests']} req, {summary['rps']} req/s, errors {summary['errors']}, "
            f"RSS idle {r['idle_rss_mb']} MB, at {n // 2}: {r['rss_at_half_mb']} MB, at {n}: "
            f"{r['rss_at_end_mb']} MB, VmHWM {r['vmhwm_mb']} MB")  # fmt: skip

    async def matrix(self) -> None:
        b = self.budget
        cells = []
        for latency in LATENCIES:
            for c in CONCURRENCIES:
                for kind in ("service", "floor"):
                    build = self.service_request if kind == "service" else self.floor_request
                    requests = [build(latency, u) for u in range(N_LOAD_USERS)]
                    summary, _ = await self.measure(
                        requests, c, b.cell_requests, b.cell_seconds, self.cell_warmup(c)
                    )
                    if kind == "floor":
                        for key in ("rss_peak_mb", "rss_end_mb", "hwm_mb",
                                    "service_cpu_ms_per_request", "llm_connections_opened",
                                    "pg_connections_opened"):
                            summary.pop(key, None)
                    summary |= {"target": kind, "llm_latency_ms": latency}
                    cells.append(summary)
                    cpu = summary["cpu_pct_of_one_core"]
                    log(f"{kind:7s} latency {latency:3d} ms c={c:2d}: {summary['rps']:8.1f} req/s "
                        f"p50 {summary['p50_ms']:7.2f} p95 {summary['p95_ms']:7.2f} "
                        f"p99 {summary['p99_ms']:7.2f} ms errors {summary['errors']} | "
                        f"svc CPU/req {summary.get('service_cpu_ms_per_request', '-')} ms | "
                        f"conns opened LLM {summary.get('llm_connections_opened', '-')} "
                        f"PG {summary.get('pg_connections_opened', '-')} | CPU% "
                        f"svc {cpu['service']} pg {cpu['postgres']} llm {cpu['fake_llm']} "
                        f"gen {cpu['loadgen']} other {cpu['other']}")  # fmt: skip
        self.results["matrix"] = cells

    async def history(self) -> None:
        b = self.budget
        status, body = await call_once(self.service_request(0, HISTORY_USER))
        if status != 200:
            raise RuntimeError(f"history: first request failed: {status} {body[:300]!r}")
        session = json.loads(body)["session_id"]
        if not re.fullmatch(r"[0-9a-f-]{36}", session):
            raise RuntimeError(f"unexpected session id {session!r}")
        t0 = time.perf_counter()
        self.pg.psql(
            "INSERT INTO chat_message (session_id, role, content, metadata, version_label, hidden,"
            " created_at) SELECT s.id, CASE WHEN g % 2 = 0 THEN 'ai' ELSE 'human' END,"
            " 'seeded history message ' || g, '{}'::jsonb, NULL, false,"
            " now() - interval '2 days' + g * interval '1 second'"
            f" FROM chat_session s, generate_series(1, {HISTORY_MESSAGES}) g"
            f" WHERE s.external_id = '{session}'; ANALYZE chat_message;"
        )
        stored = int(self.pg.psql(
            "SELECT count(*) FROM chat_message m JOIN chat_session s ON s.id = m.session_id"
            f" WHERE s.external_id = '{session}'"
        ))  # fmt: skip
        log(f"history: {stored} messages in the session (bulk insert {time.perf_counter() - t0:.2f}s)")
        await call_once(self.service_request(0, FRESH_USER))  # the fresh user's new session

        pooled: dict[str, list[float]] = {"history": [], "fresh": []}
        rounds = []
        for r in range(b.history_rounds):
            for name, user in (("history", HISTORY_USER), ("fresh", FRESH_USER)):
                summary, result = await self.measure(
                    [self.service_request(0, user)], 1, b.history_requests, b.history_seconds, 5
                )
                pooled[name] += result.latencies
                rounds.append({"round": r + 1, "session": name, "p50_ms": summary["p50_ms"],
                               "requests": summary["requests"], "errors": summary["errors"]})
        p50 = {k: round(statistics.median(v) * 1000, 3) if v else 0.0 for k, v in pooled.items()}
        self.results["history"] = {
            "stored_messages": stored,
            "p50_ms_history": p50["history"],
            "p50_ms_fresh": p50["fresh"],
            "diff_pct": round(100.0 * (p50["history"] - p50["fresh"]) / p50["fresh"], 2)
            if p50["fresh"] else None,
            "requests": {k: len(v) for k, v in pooled.items()},
            "rounds": rounds,
        }
        log(f"history: p50 {p50['history']} ms with {stored} messages vs {p50['fresh']} ms fresh")

    async def sql_trace(self, turns: int = 3) -> None:
        """Every statement of a few single turns, with server-side durations."""
        log_path = self.pg.log_path()
        # ALTER SYSTEM may not run in a transaction block: one psql call per statement.
        self.pg.psql("ALTER SYSTEM SET log_min_duration_statement = 0")
        self.pg.psql("SELECT pg_reload_conf()")
        await asyncio.sleep(0.5)
        per_turn = []
        try:
            for i in range(turns):
                before = log_path.stat().st_size
                t0 = time.perf_counter()
                status, _ = await call_once(self.service_request(0, TRACE_USER))
                wall = (time.perf_counter() - t0) * 1000
                await asyncio.sleep(0.3)
                with open(log_path, "rb") as f:
                    f.seek(before)
                    text = f.read().decode(errors="replace")
                per_turn.append(self._parse_trace(text, status, wall))
        finally:
            self.pg.psql("ALTER SYSTEM RESET log_min_duration_statement")
            self.pg.psql("SELECT pg_reload_conf()")
        (self.run_dir / "sql-trace.txt").write_text(
            "\n\n".join("\n".join(t["lines"]) for t in per_turn)
        )
        last = per_turn[-1]
        self.results["sql_trace"] = {
            "turns": [{k: v for k, v in t.items() if k != "lines"} for t in per_turn],
            "statements_last_turn": last["statements"],
        }
        log(f"SQL per turn: {last['round_trips']} round trips, {last['transactions']} BEGINs, "
            f"{last['pings']} pre-pings, {last['parses']} parses; server time "
            f"{last['server_ms']:.2f} ms, wall {last['wall_ms']:.2f} ms")  # fmt: skip

    @staticmethod
    def _parse_trace(text: str, status: Any, wall_ms: float) -> dict[str, Any]:
        """asyncpg runs a prepared statement as one round trip (bind + execute + sync) and a
        simple query (BEGIN, COMMIT) as one; the pool's pre-ping is ``BEGIN; ; ROLLBACK``."""
        lines, statements = [], []
        server_ms = 0.0
        round_trips = parses = begins = pings = 0
        for line in text.splitlines():
            match = re.search(r"duration: ([\d.]+) ms\s+(statement|parse|bind|execute)[^:]*: (.*)", line)
            if not match:
                continue
            ms, kind, sql = float(match.group(1)), match.group(2), match.group(3).strip()
            server_ms += ms
            lines.append(f"{ms:8.3f} ms  {kind:9s} {sql[:200]}")
            if kind == "parse":
                parses += 1
            elif kind in ("bind", "statement"):
                round_trips += 1
                if sql.rstrip(";").strip() == "":
                    pings += 1
                    continue
                statements.append(sql[:160])
                if sql.upper().startswith("BEGIN"):
                    begins += 1
        return {
            "status": status, "wall_ms": round(wall_ms, 2), "server_ms": round(server_ms, 3),
            "round_trips": round_trips, "parses": parses, "transactions": begins - pings,
            "pings": pings, "statements": statements, "lines": lines,
        }  # fmt: skip

    def db_micro(self) -> None:
        """Client-side CPU of one statement by layer (bench/dbmicro.py, its own process)."""
        n = 500 if self.args.quick else 2000
        out = subprocess.run(
            [PY, "-m", "bench.dbmicro", "--n", str(n), "--json"], cwd=ROOT, env=self.env,
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if out.returncode != 0:
            log(f"dbmicro failed (skipped): {out.stderr.strip()[-500:]}")
            self.results["db_micro"] = None
            return
        self.results["db_micro"] = {"n": n, "ops": json.loads(out.stdout)}
        for op in self.results["db_micro"]["ops"]:
            log(f"db micro: {op['cpu_us']:7.1f} µs CPU {op['wall_us']:7.1f} µs wall  {op['op']}")

    def find_pyspy(self) -> str | None:
        for candidate in (os.environ.get("PY_SPY"), shutil.which("py-spy"),
                          str(Path(PY).parent / "py-spy"), "/tmp/pyspy/bin/py-spy"):  # fmt: skip
            if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
                return candidate
        return None

    async def profile(self) -> None:
        pyspy = self.find_pyspy()
        if not pyspy:
            log("profile: py-spy not found (pip install --target /tmp/pyspy py-spy); skipped")
            self.results["profile"] = None
            return
        seconds = self.budget.profile_seconds
        out = self.run_dir / "profile-service.txt"
        log(f"profile: py-spy (--gil: CPU in Python) for {seconds:.0f}s during service, "
            "latency 0, c=64 ...")
        spy = self.spawn("py-spy", [pyspy, "record", "--pid", str(self.service_pid()), "--duration",
                                    str(int(seconds)), "--rate", "200", "--gil",
                                    "--format", "raw", "--output", str(out)])  # fmt: skip
        await asyncio.sleep(0.5)
        requests = [self.service_request(0, u) for u in range(N_LOAD_USERS)]
        summary, _ = await self.measure(requests, 64, 100_000, seconds + 1, 64)
        for _ in range(200):
            if not spy.alive():
                break
            await asyncio.sleep(0.1)
        self.stop_proc(spy)
        if not out.exists():
            log(f"profile: py-spy wrote nothing:\n{spy.tail()}")
            self.results["profile"] = None
            return
        prof = summarise_profile(out.read_text(), top=25)
        (self.run_dir / "profile-summary.txt").write_text(render_profile(prof))
        self.results["profile"] = {"load_under_profiler": summary, "summary": prof,
                                   "raw": shown(out)}  # fmt: skip
        log(f"profile: {prof['samples']} samples; summary in {self.run_dir / 'profile-summary.txt'}")

    # -- the whole run ------------------------------------------------------------------------
    async def run_async(self) -> None:
        await self.startup_and_rss()
        await self.matrix()
        await self.history()
        await self.sql_trace()
        self.db_micro()
        want_profile = self.args.profile if self.args.profile is not None else not self.args.quick
        if want_profile:
            await self.profile()

    def machine(self) -> dict[str, Any]:
        try:
            cpu_model = next(
                line.split(":", 1)[1].strip()
                for line in open("/proc/cpuinfo") if line.startswith("model name")
            )  # fmt: skip
        except (OSError, StopIteration):
            cpu_model = platform.processor()
        return {
            "nproc": os.cpu_count(),
            "cpu": cpu_model,
            "python": platform.python_version(),
            "kernel": platform.release(),
            "postgres": self.pg.version() if self.pg.url else "",
            "loadavg_at_start": os.getloadavg(),
        }

    def run(self) -> int:
        started = time.perf_counter()
        try:
            install_uvloop()
            self.setup()
            self.results["machine"] = self.machine()
            asyncio.run(self.run_async())
        finally:
            log("stopping everything this run started ...")
            self.cleanup()
        self.results["machine"]["loadavg_at_end"] = os.getloadavg()
        self.results["duration_s"] = round(time.perf_counter() - started, 1)
        self.results["targets"] = evaluate(self.results)
        json_path = self.out_dir / f"results-{self.ts}.json"
        json_path.write_text(json.dumps(self.results, indent=2, default=str))
        markdown = render_markdown(self.results)
        md_path = self.out_dir / f"results-{self.ts}.md"
        md_path.write_text(markdown)
        print("\n" + markdown)
        print(f"\nwrote {shown(json_path)} and {shown(md_path)} "
              f"({self.results['duration_s']} s)")  # fmt: skip
        return 0


# ---------------------------------------------------------------------------------------------
# evaluation and report


def _cell(results: dict[str, Any], target: str, latency: int, c: int) -> dict[str, Any]:
    for cell in results.get("matrix", []):
        if cell["target"] == target and cell["llm_latency_ms"] == latency and cell["concurrency"] == c:
            return cell
    return {}


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    targets = []

    def add(name: str, measured: str, ok: bool | None) -> None:
        targets.append({"target": name, "measured": measured,
                        "result": "n/a" if ok is None else ("PASS" if ok else "FAIL")})  # fmt: skip

    added = {}
    for latency in LATENCIES:
        s, f = _cell(results, "service", latency, 1), _cell(results, "floor", latency, 1)
        if s and f:
            added[latency] = s["p50_ms"] - f["p50_ms"]
    add(
        f"Added p50 latency at concurrency 1 <= {TARGET_ADDED_MS:g} ms (LLM 0 and 200 ms)",
        ", ".join(f"{v:.2f} ms (LLM {k} ms)" for k, v in added.items()) or "-",
        all(v <= TARGET_ADDED_MS for v in added.values()) if added else None,
    )
    s0 = _cell(results, "service", 0, 64)
    add(
        f"LLM 0 ms, concurrency 64: >= {TARGET_RPS_0:g} req/s, 0 errors",
        f"{s0['rps']} req/s, {s0['errors']} errors" if s0 else "-",
        (s0["rps"] >= TARGET_RPS_0 and s0["errors"] == 0) if s0 else None,
    )
    s2 = _cell(results, "service", 200, 64)
    add(
        f"LLM 200 ms, concurrency 64: >= {TARGET_RPS_200:g} req/s (90 % of 320), 0 errors",
        f"{s2['rps']} req/s ({100 * s2['rps'] / 320:.1f} % of 320), {s2['errors']} errors"
        if s2 else "-",
        (s2["rps"] >= TARGET_RPS_200 and s2["errors"] == 0) if s2 else None,
    )
    rss = results.get("rss_run")
    if rss:
        n = rss["planned_requests"]
        add(
            f"Peak RSS after {n:,} requests <= {TARGET_RSS_MB:g} MB",
            f"VmHWM {rss['vmhwm_mb']} MB ({rss['requests']:,} requests done)",
            rss["vmhwm_mb"] <= TARGET_RSS_MB and rss["requests"] >= n,
        )
        add(
            f"RSS growth from request {n // 2:,} to {n:,} <= {100 * TARGET_RSS_GROWTH:g} %",
            f"{rss['rss_at_half_mb']} -> {rss['rss_at_end_mb']} MB ({rss['growth_pct']:+.2f} %)"
            if rss["growth_pct"] is not None else "-",
            (rss["growth_pct"] is not None and rss["growth_pct"] <= 100 * TARGET_RSS_GROWTH),
        )
    st = results.get("startup_s")
    if st:
        add(
            f"Start-up to first 200 from /healthz <= {TARGET_STARTUP_S:g} s (worst of trials)",
            f"max {st['max']} s, median {st['median']} s, trials {st['trials']}",
            st["max"] <= TARGET_STARTUP_S,
        )
    h = results.get("history")
    if h:
        add(
            f"p50 with {HISTORY_MESSAGES:,} stored messages within {100 * TARGET_HISTORY:g} % of a "
            "new session's",
            f"{h['p50_ms_history']} ms vs {h['p50_ms_fresh']} ms ({h['diff_pct']:+.1f} %)",
            h["diff_pct"] is not None and h["diff_pct"] <= 100 * TARGET_HISTORY,
        )
    return targets


def render_markdown(results: dict[str, Any]) -> str:
    m = results.get("machine", {})
    out = [
        f"## Run {results['timestamp']} ({results['mode']})",
        "",
        f"Command: `{results['command']}` (from the repository root, venv active; "
        f"{results.get('duration_s', '?')} s)",
        "",
        f"Code: commit {results.get('code', {}).get('commit', '?')[:12]}"
        + (" with uncommitted changes in app/" if results.get("code", {}).get("app_dirty") else "")
        + (f" ({results['code']['source']})" if results.get("code", {}).get("source") else "")
        + ".",
        "",
        f"Machine: nproc {m.get('nproc')} ({m.get('cpu')}), Python {m.get('python')}, "
        f"PostgreSQL {m.get('postgres')}, Linux {m.get('kernel')}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m.get('loadavg_at_start', ()))}. Service: ONE worker "
        "(`chatbots serve --workers 1`), CHATBOTS_LOG_LEVEL=WARNING, the default database pool (see CHATBOTS_DATABASE_POOL_SIZE in the README).",
        "",
        "### incoming_message vs the fake LLM alone (the floor)",
        "",
        "| LLM latency | conc. | service req/s | floor req/s | service/floor | service p50 / p95 / p99 ms "
        "| floor p50 / p95 / p99 ms | added p50 ms | errors (svc/floor) | peak RSS MB | svc CPU ms/req "
        "| CPU % svc / pg / llm / gen / other | conns opened LLM / PostgreSQL / requests |",
        "|---:|---:|---:|---:|---:|---|---|---:|---|---:|---:|---|---|",
    ]
    for latency in LATENCIES:
        for c in CONCURRENCIES:
            s, f = _cell(results, "service", latency, c), _cell(results, "floor", latency, c)
            if not s or not f:
                continue
            cpu = s["cpu_pct_of_one_core"]
            mark = " †" if max(s["cpu_pct_of_one_core"]["other"],
                               f["cpu_pct_of_one_core"]["other"]) > DISTURBED_OTHER_PCT else ""  # fmt: skip
            out.append(
                f"| {latency} ms | {c}{mark} | {s['rps']:.1f} | {f['rps']:.1f} | "
                f"{s['rps'] / f['rps']:.3f} | {s['p50_ms']:.2f} / {s['p95_ms']:.2f} / {s['p99_ms']:.2f} | "
                f"{f['p50_ms']:.2f} / {f['p95_ms']:.2f} / {f['p99_ms']:.2f} | "
                f"{s['p50_ms'] - f['p50_ms']:+.2f} | {s['errors']} / {f['errors']} | "
                f"{s.get('rss_peak_mb', '-')} | {s.get('service_cpu_ms_per_request', '-')} | "
                f"{cpu['service']:.0f} / {cpu['postgres']:.0f} / "
                f"{cpu['fake_llm']:.0f} / {cpu['loadgen']:.0f} / {cpu['other']:.0f} | "
                f"{s.get('llm_connections_opened', '-')} / {s.get('pg_connections_opened', '-')} / "
                f"{s['requests'] + s['warmup_requests']} |"
            )
    out += [
        "",
        "Each cell: warm-up 2×concurrency+5 requests, then up to "
        f"{FULL.cell_requests if results['mode'] == 'full' else QUICK.cell_requests} requests or "
        f"{FULL.cell_seconds if results['mode'] == 'full' else QUICK.cell_seconds:g} s, whichever "
        "first. 'added p50' = service p50 − floor p50. CPU % is of one core (the machine has "
        "200 %): svc = the service worker, pg = PostgreSQL (all backends), llm = the fake LLM, "
        "gen = the load generator, other = the rest of the machine (processes this run did not "
        "start; jiffy-granular, so noisy for cells under a second). svc CPU ms/req = the "
        "worker's CPU time per request: one worker cannot exceed 1000 / that req/s. † = other "
        f"processes used more than {DISTURBED_OTHER_PCT:g} % of a core during the service or the "
        "floor cell (the machine is shared; each cell first waits up to --quiet-wait seconds "
        "for quiet). Conns opened: TCP connections from the service to the fake LLM that "
        "appeared during the cell (/proc/net/tcp sampled once a second) and PostgreSQL sessions "
        "established (pg_stat_database.sessions), warm-up included.",
        "",
        "### Targets",
        "",
        "| target | measured | result |",
        "|---|---|---|",
    ]
    out += [f"| {t['target']} | {t['measured']} | **{t['result']}** |" for t in results["targets"]]
    rss = results.get("rss_run")
    if rss:
        load = rss["load"]
        out += [
            "",
            f"RSS run: {load['requests']:,} requests at concurrency 64, LLM 0 ms, on a fresh worker: "
            f"{load['rps']} req/s, {load['errors']} errors, p50 {load['p50_ms']} ms, p99 "
            f"{load['p99_ms']} ms. RSS idle {rss['idle_rss_mb']} MB → {rss['rss_at_half_mb']} MB at "
            f"request {rss['planned_requests'] // 2:,} → {rss['rss_at_end_mb']} MB at "
            f"{rss['planned_requests']:,}; VmHWM {rss['vmhwm_mb']} MB.",
        ]
    h = results.get("history")
    if h:
        out += [
            "",
            f"History: {h['stored_messages']:,} messages in one session; p50 at concurrency 1 "
            f"(LLM 0 ms, {h['requests']['history']} vs {h['requests']['fresh']} requests in "
            f"alternating rounds): {h['p50_ms_history']} ms vs {h['p50_ms_fresh']} ms for a new "
            f"session ({h['diff_pct']:+.1f} %).",
        ]
    tr = results.get("sql_trace")
    if tr:
        t = tr["turns"][-1]
        out += [
            "",
            f"SQL per turn (PostgreSQL statement log of one turn, LLM 0 ms): {t['round_trips']} "
            f"round trips to PostgreSQL in {t['transactions']} transactions"
            + (f", plus {t['pings']} pool pre-pings (each `BEGIN; ; ROLLBACK`: {3 * t['pings']} "
               "of the round trips)" if t["pings"] else " (no pool pre-ping)")
            + f"; {t['parses']} parses (prepared statements cached); "
            f"server time {t['server_ms']:.2f} ms of a {t['wall_ms']:.2f} ms turn (log in "
            "`bench/out/run-<ts>/sql-trace.txt`).",
        ]
    micro = results.get("db_micro")
    if micro:
        out += [
            "",
            f"### Client-side cost of one database operation (`bench/dbmicro.py`, {micro['n']} "
            "sequential runs each, same PostgreSQL, uvloop)",
            "",
            "| operation | CPU µs | wall µs |",
            "|---|---:|---:|",
        ]
        out += [f"| {op['op']} | {op['cpu_us']} | {op['wall_us']} |" for op in micro["ops"]]
    prof = results.get("profile")
    if prof:
        p = prof["summary"]
        load = prof["load_under_profiler"]
        top = ", ".join(f"{k} {pct}%" for k, _, pct in p["self_by_package"][:8])
        out += [
            "",
            f"### Where the worker's CPU goes (py-spy --gil, {p['samples']} samples, concurrency 64, "
            f"LLM 0 ms, {load['rps']} req/s under the profiler)",
            "",
            f"Self time by package (leaf frame): {top}.",
            "",
            "| named cost (inclusive: samples with such a frame on the stack) | share |",
            "|---|---:|",
        ]
        out += [f"| {label} | {pct} % |" for label, _, pct in p["watch"]]
        out += ["", "Hottest leaf functions: " + "; ".join(
            f"{k} {pct}%" for k, _, pct in p["self_by_function"][:10]) + "."]
        out += ["", f"Full summary: `{prof['raw'].replace('profile-service.txt', 'profile-summary.txt')}`."]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short cells (a smoke run)")
    parser.add_argument("--pgport", type=int, default=None,
                        help="this run's PostgreSQL port (default: the first free from 54340)")
    parser.add_argument("--pgdata", default=None,
                        help="default /tmp/chatbots-bench-pg-<port>-<pid> (removed at the end)")
    parser.add_argument("--profile", dest="profile", action="store_true", default=None,
                        help="py-spy profile of the service (default: on unless --quick)")
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument("--quiet-wait", type=float, default=10.0, metavar="SECONDS",
                        help="before each measurement wait up to this long for other processes "
                        "to leave the CPU alone (0: do not wait); default 10")
    parser.add_argument("--rev", default=None,
                        help="benchmark this git revision (exported to a temp dir) instead of the "
                        "working tree; results still land in this checkout's bench/out/")
    parser.add_argument("--render", metavar="RESULTS_JSON",
                        help="only print the markdown of an earlier run's results JSON")
    args = parser.parse_args(argv)
    if args.render:
        results = json.loads(Path(args.render).read_text())
        results["targets"] = evaluate(results)
        print(render_markdown(results))
        return 0
    if args.rev:
        argv = sys.argv[1:] if argv is None else argv
        child, skip = [], False
        for arg in argv:
            if skip or arg == "--rev" or arg.startswith("--rev="):
                skip = arg == "--rev"
                continue
            child.append(arg)
        return run_at_revision(args.rev, argv, child)

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    return Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())
