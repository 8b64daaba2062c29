"""What the benchmark modules share: paths, the fixed shape of a run (users, latencies,
concurrencies), the time budgets of a full and a quick run, and the log line."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
HOST = "127.0.0.1"
TEAM = "bench"
N_LOAD_USERS = 64  # users 0..63: the virtual clients
HISTORY_USER, FRESH_USER, TRACE_USER = 64, 65, 66
N_USERS = 67
LATENCIES = (0, 200)
CONCURRENCIES = (1, 16, 64)
HISTORY_MESSAGES = 5000
# The fresh scenario: a new user (participant, session) on every request, LLM latency 0, then
# the same users' second messages. Its users are seeded apart from the load users.
FRESH_CONCURRENCIES = (1, 64)
NEW_USER_PREFIX = "bench-new"
SYSTEM_PROMPT = "You are a benchmark bot. Answer briefly."

# A cell where the rest of the machine used more than this (% of one core) is marked as disturbed.
QUIET_OTHER_PCT = 20.0
DISTURBED_OTHER_PCT = 25.0


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
    # The matrix is measured this many times, all cells each time (this VM's speed drifts by
    # tens of % over minutes: the floor itself moved 4,300-7,100 req/s between runs); the
    # report shows each cell's median trial and lists every trial.
    matrix_trials: int
    # Measured requests of a fresh (and of its returning) cell: every one needs a user seeded in
    # advance, so fewer than a matrix cell's (the duration cap is cell_seconds all the same).
    fresh_requests: int


FULL = Budget(15, 3000, 10_000, 240, 6, 150, 4, 3, 10, 3, 1000)
QUICK = Budget(4, 600, 2_000, 40, 1, 150, 3, 1, 6, 1, 300)


def cell_warmup(concurrency: int) -> int:
    """Unmeasured requests before a cell: two rounds of every client, and a few more."""
    return 2 * concurrency + 5


def new_users_needed(budget: Budget) -> int:
    """Users the fresh scenario can use up: each fresh cell's warm-up and measured requests, in
    every trial (a cell stopped by its duration cap uses fewer)."""
    per_trial = sum(cell_warmup(c) + budget.fresh_requests for c in FRESH_CONCURRENCIES)
    return budget.matrix_trials * per_trial


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
