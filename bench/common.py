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
# The production scenarios (issue 9): run only when named (--only NAME, or --only production).
PRODUCTION = ("soak", "outage", "scale")
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
# The trigger scenarios (bench/trigger.py): POST /api/trigger_bot with message_text, each to a
# new telegram participant, by a team admin's write key; compared with new users' first
# incoming_message (their own seeded users, apart from the fresh scenario's), and delivered
# end to end to the fake Telegram Bot API (bench/fake_telegram.py).
TRIGGER_CONCURRENCY = 32
TRIGGER_USER_PREFIX = "bench-trig"
ADMIN_EMAIL = "bench-admin@bench.example"
TELEGRAM_BOT_TOKEN = "123456:bench-not-a-real-token"
FAKE_TELEGRAM_LATENCY_MS = 50
# CHATBOTS_DELIVERY_CONCURRENCY of the deliveries scenario: None = not set (the default, 8),
# first; then a higher one.
DELIVERY_CONCURRENCIES: tuple[int | None, ...] = (None, 32)
DEFAULT_DELIVERY_CONCURRENCY = 8  # app/config.py's default, reported next to "not set"

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
    # The trigger scenario: trials (each an incoming_message cell and a trigger_bot cell, in
    # alternating order) and measured requests per cell.
    trigger_trials: int = 3
    trigger_requests: int = 2000
    # The deliveries scenario: deliveries per round, rounds per delivery concurrency.
    delivery_count: int = 2000
    delivery_trials: int = 3


FULL = Budget(15, 3000, 10_000, 240, 6, 150, 4, 3, 10, 3, 1000)
QUICK = Budget(4, 600, 2_000, 40, 1, 150, 3, 1, 6, 1, 300, trigger_trials=2, trigger_requests=500,
               delivery_count=500, delivery_trials=1)


def cell_warmup(concurrency: int) -> int:
    """Unmeasured requests before a cell: two rounds of every client, and a few more."""
    return 2 * concurrency + 5


def new_users_needed(budget: Budget) -> int:
    """Users the fresh scenario can use up: each fresh cell's warm-up and measured requests, in
    every trial (a cell stopped by its duration cap uses fewer)."""
    per_trial = sum(cell_warmup(c) + budget.fresh_requests for c in FRESH_CONCURRENCIES)
    return budget.matrix_trials * per_trial


def trigger_users_needed(budget: Budget) -> int:
    """Users the trigger scenario's incoming_message cells can use up (one per request)."""
    return budget.trigger_trials * (cell_warmup(TRIGGER_CONCURRENCY) + budget.trigger_requests)


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
