"""The harness of a run: its state (processes, PostgreSQL, chatbots, keys, results), set-up with
the ``chatbots`` CLI and ``bench/seed.py``, the service's worker, the requests of the service and
of the floor, and one measured load phase with its CPU, RSS and connection counts."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    ADMIN_EMAIL, FAKE_TELEGRAM_LATENCY_MS, FULL, HOST, LATENCIES, N_USERS, NEW_USER_PREFIX,
    PRODUCTION, PY,
    QUICK, QUIET_OTHER_PCT, ROOT, SYSTEM_PROMPT, TEAM, TELEGRAM_BOT_TOKEN, TRIGGER_USER_PREFIX, log,
    new_users_needed, trigger_users_needed,
)  # fmt: skip
from bench.loadgen import LoadResult, Request, run_load
from bench.processes import (
    Postgres, Proc, chatbots_cmd, free_pg_port, free_port, wait_healthz, wait_listening,
)  # fmt: skip
from bench.sampling import CpuMeter, children_of, client_ports_to, proc_status


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


class Bench:
    """One run: what it started (stopped by ``cleanup``), its chatbots and keys, and the
    ``results`` that the steps in ``bench/measurements.py`` fill in."""

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
        self.new_keys: list[str] = []  # the fresh scenario's users, each used for one first contact
        self.new_keys_used = 0
        # The trigger scenarios: a team admin's write key (trigger_bot needs admin or
        # chatbot_admin), the latency-0 chatbot's telegram channel, the fake Telegram Bot API and
        # the new users of the trigger scenario's incoming_message cells.
        self.admin_key = ""
        self.trigger_keys: list[str] = []
        self.trigger_keys_used = 0
        self.fake_telegram: Proc | None = None
        self.fake_telegram_port = 0
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

    def cli(self, *args: str) -> Any:
        out = subprocess.run(
            [*chatbots_cmd(), *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"chatbots {' '.join(args)} failed: {out.stderr.strip()[-2000:]}")
        return json.loads(out.stdout) if "--json" in args else out.stdout

    # -- set-up -------------------------------------------------------------------------------
    def runs(self, part: str) -> bool:
        """Whether this run measures ``part`` ("matrix": the incoming_message measurements;
        "auth": what authenticating costs; "trigger": the trigger scenarios; "soak", "outage",
        "scale": the production scenarios): ``--only`` picks one ("production": the three
        production scenarios); by default all but the production scenarios."""
        only = getattr(self.args, "only", None)
        if only is None:
            return part not in PRODUCTION
        return part in PRODUCTION if only == "production" else only == part

    def setup(self) -> None:
        log(f"PostgreSQL on {HOST}:{self.pg.port} (PGDATA {self.pg.pgdata})")
        url = self.pg.start()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CHATBOTS_")}
        self.env |= {
            "CHATBOTS_DATABASE_URL": url,
            "CHATBOTS_SECRET_KEY": "bench-secret-key-not-secret",
            "CHATBOTS_LOG_LEVEL": "WARNING",
            # The load is one team far over the default limit (2,000 requests / 5 minutes): the
            # limits stay on (their cost is part of what is measured) but too high to refuse,
            # over a one-second window: a moving window keeps one entry per request counted in
            # it, so a 5-minute window at ~900 req/s would hold ~270,000 (its expiry copying
            # them: 4.8 % of the worker's CPU in run 204832), where a real team's holds at most
            # its limit (2,000). One second at the bench's rate holds about as many.
            "CHATBOTS_RATE_LIMIT_TEAM": "100000000/second",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        self.fake = self.spawn("fake_llm", [PY, str(ROOT / "bench" / "fake_llm.py"), "--port", "0",
                                            "--latency-ms", "0"])  # fmt: skip
        self.fake_port = wait_listening(self.fake)
        log(f"fake LLM on {HOST}:{self.fake_port}")
        # Started whatever runs, so that no service of this run can ever reach the real Telegram
        # (the trigger scenario's deliveries stay pending, but a worker could take them).
        self.fake_telegram = self.spawn("fake_telegram", [
            PY, "-m", "bench.fake_telegram", "--port", "0", "--latency-ms",
            str(FAKE_TELEGRAM_LATENCY_MS), "--token", TELEGRAM_BOT_TOKEN,
        ])  # fmt: skip
        self.fake_telegram_port = wait_listening(self.fake_telegram)
        self.env["CHATBOTS_TELEGRAM_API_BASE"] = f"http://{HOST}:{self.fake_telegram_port}"
        log(f"fake Telegram Bot API on {HOST}:{self.fake_telegram_port} "
            f"(sendMessage after {FAKE_TELEGRAM_LATENCY_MS} ms)")  # fmt: skip

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
        self.keys = self.seed_users(N_USERS)
        log(f"migrated and seeded ({N_USERS} users with write keys, 2 chatbots) "
            f"in {time.perf_counter() - t0:.1f}s")  # fmt: skip
        if self.runs("matrix"):
            t0 = time.perf_counter()
            n = new_users_needed(self.budget)
            self.new_keys = self.seed_users(n, "--prefix", NEW_USER_PREFIX, "--bulk")
            seconds = time.perf_counter() - t0
            self.results["new_users_seed"] = {"users": n, "seconds": round(seconds, 2)}
            log(f"seeded {n} new users for the fresh scenario (bulk) in {seconds:.1f}s")
        # The outage and scale-out scenarios send deliveries through the fake Telegram too.
        if self.runs("trigger") or self.runs("outage") or self.runs("scale"):
            try:
                self.setup_trigger()
            except Exception as exc:  # e.g. --rev of a commit before trigger_bot and channels
                if self.args.only == "trigger":
                    raise
                self.results["trigger_skipped"] = f"set-up: {exc}"[-1000:]
                log(f"trigger set-up failed, the trigger scenarios will be skipped: {exc}")

    def setup_trigger(self) -> None:
        """What trigger_bot needs: an admin's write key and a telegram channel on the latency-0
        chatbot (its bot token the fake's); and the incoming_message side's new users."""
        t0 = time.perf_counter()
        self.cli("user", "create", "--email", ADMIN_EMAIL, "--team", TEAM, "--role", "admin",
                 "--json")  # fmt: skip
        key = self.cli("apikey", "create", "--email", ADMIN_EMAIL, "--team", TEAM, "--name",
                       "bench trigger", "--write", "--json")  # fmt: skip
        self.admin_key = key["key"]
        self.cli("channel", "create", "--chatbot", self.chatbots[0], "--platform", "telegram",
                 "--config", f"bot_token={TELEGRAM_BOT_TOKEN}", "--json")  # fmt: skip
        n = trigger_users_needed(self.budget)
        self.trigger_keys = self.seed_users(n, "--prefix", TRIGGER_USER_PREFIX, "--bulk")
        seconds = time.perf_counter() - t0
        self.results["trigger_setup"] = {"users": n, "seconds": round(seconds, 2)}
        log(f"trigger set-up: admin key, telegram channel, {n} new users (bulk) in {seconds:.1f}s")

    def seed_users(self, count: int, *options: str) -> list[str]:
        """``count`` users made by ``bench/seed.py`` (one process): their write keys, in order."""
        seeded = subprocess.run(
            [PY, "-m", "bench.seed", "--team", TEAM, "--users", str(count), *options], cwd=ROOT,
            env=self.env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if seeded.returncode != 0:
            raise RuntimeError(f"bench.seed failed: {seeded.stderr[-2000:]}")
        return [u["key"] for u in json.loads(seeded.stdout)["users"]]

    def take_new_users(self, count: int) -> range:
        """The next ``count`` unused indexes into ``new_keys``: no user is a first contact twice."""
        start = self.new_keys_used
        if start + count > len(self.new_keys):
            raise RuntimeError(f"only {len(self.new_keys) - start} new users left, {count} wanted")
        self.new_keys_used += count
        return range(start, start + count)

    def take_trigger_users(self, count: int) -> range:
        """The next ``count`` unused indexes into ``trigger_keys``."""
        start = self.trigger_keys_used
        if start + count > len(self.trigger_keys):
            raise RuntimeError(f"only {len(self.trigger_keys) - start} trigger users left, {count} wanted")
        self.trigger_keys_used += count
        return range(start, start + count)

    def start_service(
        self, name: str = "service", env: dict[str, str] | None = None
    ) -> tuple[Proc, int, float]:
        """``chatbots serve --workers 1`` on a free port; ``env`` adds to (or overrides) the
        run's environment (e.g. CHATBOTS_WORKER_IN_PROCESS)."""
        port = free_port()
        cmd = [*chatbots_cmd(), "serve", "--host", HOST, "--port", str(port), "--workers", "1"]
        proc = self.spawn(name, cmd, self.env | env if env else None)
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
        text = f"hello from client {user}"
        return self.incoming_request(latency, self.keys[user], text, str(user))

    def new_user_request(self, latency: int, index: int, visit: int) -> Request:
        """New user ``index``'s message number ``visit``: 1 opens their participant and session
        (a first contact), 2 continues that session (a returning user)."""
        text = f"hello {'from' if visit == 1 else 'again from'} new user {index}"
        return self.incoming_request(latency, self.new_keys[index], text, f"new-{index}")

    def incoming_request(
        self, latency: int, key: str, text: str, label: str, port: int | None = None
    ) -> Request:
        """``port``: another API process than the bench's service (the scale-out's)."""
        url = f"http://{HOST}:{port or self.service_port}/channels/api/{self.chatbots[latency]}/incoming_message"
        body = json.dumps({"message": text})
        return Request.build("POST", url, {"X-api-key": key}, body, label=label)

    def trigger_user_request(self, index: int) -> Request:
        """The trigger scenario's incoming_message side: new user ``index``'s first message
        (LLM latency 0): a new participant and session, as a trigger makes."""
        text = f"hello from trigger-scenario user {index}"
        return self.incoming_request(0, self.trigger_keys[index], text, f"trig-{index}")

    def trigger_request(
        self, identifier: str, text: str | None = None, port: int | None = None
    ) -> Request:
        """POST /api/trigger_bot: ``message_text`` to telegram participant ``identifier`` of the
        latency-0 chatbot, by the admin's key (to ``port``, else the bench's service)."""
        url = f"http://{HOST}:{port or self.service_port}/api/trigger_bot"
        body = json.dumps({
            "identifier": identifier, "platform": "telegram", "experiment": self.chatbots[0],
            "message_text": text or f"Reminder for {identifier}: your appointment is tomorrow.",
        })  # fmt: skip
        return Request.build("POST", url, {"X-api-key": self.admin_key}, body, label=identifier)

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
        shared: bool = False,
    ) -> tuple[dict[str, Any], LoadResult]:
        """One load phase (``run_load``; ``shared``: each request sent once) with the CPU of
        every process, the worker's RSS and the connections the service opened."""
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
                on_complete=on_complete, on_measure_start=meter.start, shared=shared,
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
