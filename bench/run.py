"""The benchmark: the service on PostgreSQL with ONE worker, against the fake LLM, and the floor.

    python bench/run.py            # the full run (about 13 minutes on 2 cores)
    python bench/run.py --quick    # a short smoke run (about 2 minutes)
    python bench/run.py --only trigger   # only the trigger_bot scenarios (3 to 5 minutes)
    python bench/run.py --only auth      # only what authenticating costs (about 1 minute)
    python bench/run.py --only production   # the soak, the outage and the scale-out (issue 9)
    python bench/run.py --only soak|outage|scale   # one of those three

The production scenarios (``bench/soak.py``, ``bench/outage.py``, ``bench/scaleout.py``) run
only when named: the soak alone takes over ten minutes.

What it does, stopping everything it started in the end (try/finally, process groups):

1. starts its own PostgreSQL (``.ci/start-postgres`` on the first free port from 54340, with a
   PGDATA of its own, removed at the end) and
   the fake LLM (``bench/fake_llm.py``, one process; per-request latency through the model names
   ``latency-0`` and ``latency-200``, which the floor uses too);
2. migrates and seeds with the ``chatbots`` CLI (team, provider, two published chatbots) and
   ``bench/seed.py`` (67 users, each with its own write API key: one participant per virtual
   client, so the per-session turn lease never serialises the load; and, in batched INSERTs,
   the fresh scenario's new users: one per request it may send);
3. measures start-up: spawn ``chatbots serve --workers 1`` → first 200 from ``/healthz``;
4. on a fresh worker: 10,000 requests at concurrency 64 (LLM latency 0) sampling VmRSS/VmHWM
   from ``/proc/<pid>/status`` (peak, and growth from the 5,000th to the 10,000th request);
5. the matrix {LLM latency 0, 200 ms} × {concurrency 1, 16, 64} against ``incoming_message`` and
   the same matrix against the fake LLM alone (the floor): requests/s, p50/p95/p99, errors, peak
   RSS of the service and the CPU of each process; each trial ends with the fresh scenario:
   at concurrency 1 and 64, LLM latency 0, a new user (participant, session) on every request,
   then the same users' second messages (ratio of req/s fresh/returning, added p50 vs the floor);
6. history: one user's session gets 5,000 messages by a bulk INSERT, then ``VACUUM ANALYZE``;
   its p50 at concurrency 1 vs a fresh user's (alternating rounds);
7. an SQL trace of single turns (PostgreSQL ``log_min_duration_statement=0``: statements and
   server time per turn), the client-side CPU of one statement by layer (``bench/dbmicro.py``:
   raw asyncpg vs SQLAlchemy Core vs ORM) and, when py-spy is found (PATH, the venv,
   ``$PY_SPY`` or /tmp/pyspy/bin), a CPU profile of the service under load;
8. what authenticating costs a request (``bench/authcost.py``; ``--only auth``): an API key
   remembered (the default) and looked up every time (CHATBOTS_AUTH_CACHE_SECONDS=0), p50
   against the same request without a credential, on services of their own;
9. the trigger scenarios (``bench/trigger.py``, last, on services of their own; ``--only
   trigger`` runs only them): ``POST /api/trigger_bot`` vs a first incoming_message on one
   worker with the delivery worker off, and the deliveries end to end through a fake Telegram
   Bot API (``bench/fake_telegram.py``) with the worker in process;
10. prints the table and a PASS/FAIL line per target, writes ``bench/out/results-<ts>.json`` and
   ``bench/out/results-<ts>.md`` (markdown for ``bench/RESULTS.md``); logs in ``bench/out/run-<ts>/``.

All traffic goes to 127.0.0.1; every load phase is bounded in requests and seconds.

This file parses the options and runs the steps in order; the work is done in ``common.py``
(shared constants and budgets), ``processes.py`` (children, PostgreSQL, ports), ``sampling.py``
(/proc: RSS, CPU, connections), ``harness.py`` (the run's state, set-up, one measured load
phase), ``measurements.py`` (the steps 3-7) and ``report.py`` (targets, markdown, results files).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# The checkout (bench.common.ROOT), on sys.path so that `python bench/run.py` finds `bench`.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import authcost, measurements, outage, scaleout, soak, trigger  # noqa: E402
from bench.common import PRODUCTION, PY, log  # noqa: E402
from bench.harness import Bench  # noqa: E402
from bench.loadgen import install_uvloop  # noqa: E402
from bench.report import evaluate, render_markdown, write_results  # noqa: E402


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


async def measure_all(bench: Bench) -> None:
    want_profile = bench.args.profile if bench.args.profile is not None else not bench.args.quick
    if bench.runs("matrix"):
        await measurements.startup_and_rss(bench)
        await measurements.matrix(bench)
        await measurements.history(bench)
        await measurements.sql_trace(bench)
        measurements.db_micro(bench)
        if want_profile:
            await measurements.profile(bench)
    if bench.runs("auth"):
        await authcost.auth_cost(bench)
    if bench.runs("trigger") and "trigger_skipped" not in bench.results:
        # Last: they stop the main service (its worker would send their deliveries). A failure
        # here (e.g. --rev of a commit without trigger_bot) keeps the results measured so far.
        try:
            await trigger.trigger_scenarios(bench, want_profile)
        except Exception as exc:
            if bench.args.only == "trigger":
                raise
            bench.results["trigger_skipped"] = f"{type(exc).__name__}: {exc}"[-1000:]
            log(f"trigger scenarios failed, skipped: {bench.results['trigger_skipped']}")
    # The production scenarios (issue 9), each on services of its own, only when named.
    if bench.runs("scale"):
        await scaleout.scale_out(bench)
    if bench.runs("outage"):
        await outage.outage(bench)
    if bench.runs("soak"):
        await soak.soak(bench)


def run(bench: Bench) -> int:
    started = time.perf_counter()
    try:
        install_uvloop()
        bench.setup()
        bench.results["machine"] = bench.machine()
        asyncio.run(measure_all(bench))
    finally:
        log("stopping everything this run started ...")
        bench.cleanup()
    bench.results["machine"]["loadavg_at_end"] = os.getloadavg()
    bench.results["duration_s"] = round(time.perf_counter() - started, 1)
    bench.results["targets"] = evaluate(bench.results)
    write_results(bench.results, bench.out_dir, bench.ts)
    return 0


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
    parser.add_argument("--only", choices=("matrix", "auth", "trigger", *PRODUCTION, "production"),
                        default=None,
                        help="run only part of the benchmark: 'trigger' = the trigger_bot "
                        "throughput and deliveries scenarios; 'auth' = what authenticating "
                        "costs a request; 'matrix' = everything else (default: those three); "
                        "'soak', 'outage', 'scale' = one production scenario, 'production' = "
                        "the three (never part of the default run)")
    parser.add_argument("--soak-seconds", type=float, default=None, metavar="SECONDS",
                        help="the soak's measured duration (default 600; --quick: 60)")
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
    return run(Bench(args))


if __name__ == "__main__":
    sys.exit(main())
