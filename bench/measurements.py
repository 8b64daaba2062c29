"""The measurements, each a step of the run on a set-up ``Bench``: start-up and RSS, the matrix
of the service and the floor (each trial ending with the fresh scenario: first contacts, then
the same users returning), the long-history comparison, the SQL trace of a turn, the client
cost of one database operation (``bench/dbmicro.py``) and the py-spy profile of the worker."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import (
    CONCURRENCIES, FRESH_CONCURRENCIES, FRESH_USER, HISTORY_MESSAGES, HISTORY_USER, HOST, LATENCIES,
    N_LOAD_USERS, NEW_USER_PREFIX, PY, ROOT, TRACE_USER, cell_warmup, log, shown,
)  # fmt: skip
from bench.harness import Bench
from bench.loadgen import Client, Request
from bench.pyspy_summary import render as render_profile
from bench.pyspy_summary import summarise as summarise_profile
from bench.sampling import proc_status


async def call_once(request: Request) -> tuple[int | str, bytes]:
    client = Client(request, timeout=30.0)
    try:
        return await client.call()
    finally:
        client.close()


async def smoke(bench: Bench) -> None:
    for latency in LATENCIES:
        status, body = await call_once(bench.service_request(latency, TRACE_USER))
        if status != 200:
            raise RuntimeError(f"smoke request failed: {status} {body[:500]!r}")
        reply = json.loads(body)
        if not reply.get("response", "").startswith("echo: hello from client"):
            raise RuntimeError(f"unexpected reply: {reply}")
    log("smoke: both chatbots answer through the fake LLM")


async def startup_and_rss(bench: Bench) -> None:
    b = bench.budget
    times = []
    for i in range(b.startup_trials - 1):  # extra spawns, stopped at once
        proc, _, seconds = bench.start_service(f"service-startup-{i + 1}")
        bench.stop_proc(proc)
        times.append(seconds)
        log(f"start-up trial {i + 1}: {seconds:.3f}s")
    bench.service, bench.service_port, seconds = bench.start_service()
    times.append(seconds)
    log(f"start-up trial {len(times)}: {seconds:.3f}s (this worker runs the benchmark)")
    bench.results["startup_s"] = {
        "trials": [round(t, 3) for t in times],
        "median": round(statistics.median(times), 3),
        "max": round(max(times), 3),
        "command": " ".join(["chatbots", "serve", "--host", HOST, "--port", "<free>",
                             "--workers", "1"]),  # fmt: skip
    }
    pid = bench.service_pid()
    idle = proc_status(pid)
    await smoke(bench)

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
    requests = [bench.service_request(0, u) for u in range(N_LOAD_USERS)]
    summary, _ = await bench.measure(requests, 64, n, b.rss_seconds, 64, on_complete)
    end = proc_status(pid)
    half = marks.get(n // 2, 0)
    full = marks.get(n, end.get("VmRSS", 0))
    bench.results["rss_run"] = {
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
    r = bench.results["rss_run"]
    log(f"RSS run: {summary['requests']} req, {summary['rps']} req/s, errors {summary['errors']}, "
        f"RSS idle {r['idle_rss_mb']} MB, at {n // 2}: {r['rss_at_half_mb']} MB, at {n}: "
        f"{r['rss_at_end_mb']} MB, VmHWM {r['vmhwm_mb']} MB")  # fmt: skip


async def matrix(bench: Bench) -> None:
    """Every (LLM latency, concurrency) cell, service then floor, ``matrix_trials`` times (all
    cells per trial, so a slow spell of the machine hits one trial of many cells rather than
    every trial of one). Each cell keeps its median trial by service req/s (service and floor
    of the same trial) and the req/s of all its trials. Each trial ends with the fresh
    scenario (``_fresh_trial``), compared with that trial's floor."""
    b = bench.budget
    trials: dict[tuple[int, int], list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    fresh_trials = []
    for trial in range(1, b.matrix_trials + 1):
        for latency in LATENCIES:
            for c in CONCURRENCIES:
                service = await _matrix_cell(bench, "service", latency, c, trial)
                floor = await _matrix_cell(bench, "floor", latency, c, trial)
                trials.setdefault((latency, c), []).append((service, floor))
        floors = {c: trials[(0, c)][-1][1] for c in FRESH_CONCURRENCIES}
        fresh_trials.append(await _fresh_trial(bench, trial, floors))
    bench.results["fresh"] = _fresh_results(bench, fresh_trials)
    cells = []
    for pairs in trials.values():
        service, floor = sorted(pairs, key=lambda pair: pair[0]["rps"])[(len(pairs) - 1) // 2]
        service["trials_rps"] = [pair[0]["rps"] for pair in pairs]
        floor["trials_rps"] = [pair[1]["rps"] for pair in pairs]
        cells += [service, floor]
    bench.results["matrix"] = cells


async def _matrix_cell(
    bench: Bench, kind: str, latency: int, c: int, trial: int
) -> dict[str, Any]:
    b = bench.budget
    build = bench.service_request if kind == "service" else bench.floor_request
    requests = [build(latency, u) for u in range(N_LOAD_USERS)]
    summary, _ = await bench.measure(requests, c, b.cell_requests, b.cell_seconds, cell_warmup(c))
    if kind == "floor":
        for key in ("rss_peak_mb", "rss_end_mb", "hwm_mb", "service_cpu_ms_per_request",
                    "llm_connections_opened", "pg_connections_opened"):  # fmt: skip
            summary.pop(key, None)
    summary |= {"target": kind, "llm_latency_ms": latency, "trial": trial}
    _log_cell(summary)
    return summary


def _log_cell(s: dict[str, Any]) -> None:
    cpu = s["cpu_pct_of_one_core"]
    log(f"trial {s['trial']} {s['target']:9s} latency {s['llm_latency_ms']:3d} ms "
        f"c={s['concurrency']:2d}: {s['rps']:8.1f} req/s p50 {s['p50_ms']:7.2f} "
        f"p95 {s['p95_ms']:7.2f} p99 {s['p99_ms']:7.2f} ms errors {s['errors']} | "
        f"svc CPU/req {s.get('service_cpu_ms_per_request', '-')} ms | "
        f"conns opened LLM {s.get('llm_connections_opened', '-')} "
        f"PG {s.get('pg_connections_opened', '-')} | CPU% "
        f"svc {cpu['service']} pg {cpu['postgres']} llm {cpu['fake_llm']} "
        f"gen {cpu['loadgen']} other {cpu['other']}")  # fmt: skip


async def _fresh_trial(
    bench: Bench, trial: int, floors: dict[int, dict[str, Any]]
) -> dict[str, Any]:
    """One trial of the fresh scenario (LLM latency 0). At each concurrency: new users' first
    messages (each request a user never seen: a new participant and session), then at once
    the same users' second messages in the same order (their session exists): the pair is
    measured back to back, as this VM's speed drifts over minutes."""
    cells = []
    for c in FRESH_CONCURRENCIES:
        users = bench.take_new_users(cell_warmup(c) + bench.budget.fresh_requests)
        first = await _fresh_cell(bench, "fresh", users, c, trial, floors[c])
        # Only the users the first cell reached (its duration cap may stop it early).
        reached = users[: first["warmup_requests"] + first["requests"]]
        cells += [first, await _fresh_cell(bench, "returning", reached, c, trial, floors[c])]
    return {"trial": trial, "cells": cells, "ratio_rps_c64": _fresh_ratio(cells, 64)}


async def _fresh_cell(
    bench: Bench, kind: str, users: range, c: int, trial: int, floor: dict[str, Any]
) -> dict[str, Any]:
    """New users' first (``fresh``) or second (``returning``) messages, each user once."""
    b = bench.budget
    visit = 1 if kind == "fresh" else 2
    requests = [bench.new_user_request(0, i, visit) for i in users]
    summary, _ = await bench.measure(requests, c, b.fresh_requests, b.cell_seconds,
                                     cell_warmup(c), shared=True)  # fmt: skip
    added = round(summary["p50_ms"] - floor["p50_ms"], 2)
    summary |= {"target": kind, "llm_latency_ms": 0, "trial": trial, "users": len(users),
                "floor_p50_ms": floor["p50_ms"], "added_p50_ms": added}  # fmt: skip
    _log_cell(summary)
    return summary


def _fresh_ratio(cells: list[dict[str, Any]], c: int) -> float:
    """Fresh req/s over returning req/s at concurrency ``c`` (0 when nothing returned)."""
    rps = {s["target"]: s["rps"] for s in cells if s["concurrency"] == c}
    return round(rps["fresh"] / rps["returning"], 3) if rps.get("returning") else 0.0


def _fresh_results(bench: Bench, trials: list[dict[str, Any]]) -> dict[str, Any]:
    """The trial with the median c=64 ratio (the figure the target judges), each of its cells
    with the req/s of every trial, every trial's ratios, and the database check."""
    median = sorted(trials, key=lambda t: t["ratio_rps_c64"])[(len(trials) - 1) // 2]
    for i, cell in enumerate(median["cells"]):
        cell["trials_rps"] = [t["cells"][i]["rps"] for t in trials]
    ratios = {c: [_fresh_ratio(t["cells"], c) for t in trials] for c in FRESH_CONCURRENCIES}
    users = sum(s["users"] for t in trials for s in t["cells"] if s["target"] == "returning")
    log(f"fresh: median trial {median['trial']}, fresh/returning req/s at c=64 "
        f"{median['ratio_rps_c64']} (trials {ratios[64]})")  # fmt: skip
    return {
        "median_trial": median["trial"],
        "cells": median["cells"],
        "ratio_rps_c64": median["ratio_rps_c64"],
        "ratio_rps_c1": _fresh_ratio(median["cells"], 1),
        "trials_ratio_rps": {str(c): r for c, r in ratios.items()},
        "check": _check_new_sessions(bench, users),
    }


def _check_new_sessions(bench: Bench, users: int) -> dict[str, Any] | None:
    """That the scenario measured what it says: every new user reached got one participant and
    one session, and both messages were answered in it (4 messages), none opened a second."""
    try:
        row = bench.pg.psql(
            "SELECT count(DISTINCT p.id), count(DISTINCT s.id), count(m.id) FROM participant p"
            " JOIN chat_session s ON s.participant_id = p.id"
            " LEFT JOIN chat_message m ON m.session_id = s.id"
            f" WHERE p.identifier LIKE '{NEW_USER_PREFIX}-%'"
        )  # fmt: skip
    except RuntimeError as exc:  # the schema is the app's: report, do not fail the run
        log(f"fresh: database check skipped: {exc}")
        return None
    participants, sessions, messages = map(int, row.split("|"))
    ok = participants == sessions == users and messages == 4 * users
    check = {"users": users, "participants": participants, "sessions": sessions,
             "messages": messages, "ok": ok}  # fmt: skip
    log(f"fresh: database check {check}")
    return check


async def history(bench: Bench) -> None:
    b = bench.budget
    status, body = await call_once(bench.service_request(0, HISTORY_USER))
    if status != 200:
        raise RuntimeError(f"history: first request failed: {status} {body[:300]!r}")
    session = json.loads(body)["session_id"]
    if not re.fullmatch(r"[0-9a-f-]{36}", session):
        raise RuntimeError(f"unexpected session id {session!r}")
    t0 = time.perf_counter()
    bench.pg.psql(
        "INSERT INTO chat_message (session_id, role, content, metadata, version_label, hidden,"
        " created_at) SELECT s.id, CASE WHEN g % 2 = 0 THEN 'ai' ELSE 'human' END,"
        " 'seeded history message ' || g, '{}'::jsonb, NULL, false,"
        " now() - interval '2 days' + g * interval '1 second'"
        f" FROM chat_session s, generate_series(1, {HISTORY_MESSAGES}) g"
        f" WHERE s.external_id = '{session}'"
    )
    # Settle the database before measuring: the bulk insert (and the fresh scenario's thousands
    # of rows before it) would otherwise bring autovacuum in during the rounds, at random.
    bench.pg.psql("VACUUM ANALYZE")
    stored = int(bench.pg.psql(
        "SELECT count(*) FROM chat_message m JOIN chat_session s ON s.id = m.session_id"
        f" WHERE s.external_id = '{session}'"
    ))  # fmt: skip
    log(f"history: {stored} messages in the session (bulk insert {time.perf_counter() - t0:.2f}s)")
    await call_once(bench.service_request(0, FRESH_USER))  # the fresh user's new session

    pooled: dict[str, list[float]] = {"history": [], "fresh": []}
    rounds = []
    for r in range(b.history_rounds):
        for name, user in (("history", HISTORY_USER), ("fresh", FRESH_USER)):
            summary, result = await bench.measure(
                [bench.service_request(0, user)], 1, b.history_requests, b.history_seconds, 5
            )
            pooled[name] += result.latencies
            rounds.append({"round": r + 1, "session": name, "p50_ms": summary["p50_ms"],
                           "requests": summary["requests"], "errors": summary["errors"]})
    p50 = {k: round(statistics.median(v) * 1000, 3) if v else 0.0 for k, v in pooled.items()}
    bench.results["history"] = {
        "stored_messages": stored,
        "p50_ms_history": p50["history"],
        "p50_ms_fresh": p50["fresh"],
        "diff_pct": round(100.0 * (p50["history"] - p50["fresh"]) / p50["fresh"], 2)
        if p50["fresh"] else None,
        "requests": {k: len(v) for k, v in pooled.items()},
        "rounds": rounds,
    }
    log(f"history: p50 {p50['history']} ms with {stored} messages vs {p50['fresh']} ms fresh")


async def sql_trace(bench: Bench, turns: int = 3) -> None:
    """Every statement of a few single turns, with server-side durations."""
    log_path = bench.pg.log_path()
    # ALTER SYSTEM may not run in a transaction block: one psql call per statement.
    bench.pg.psql("ALTER SYSTEM SET log_min_duration_statement = 0")
    bench.pg.psql("SELECT pg_reload_conf()")
    await asyncio.sleep(0.5)
    per_turn = []
    try:
        for i in range(turns):
            before = log_path.stat().st_size
            t0 = time.perf_counter()
            status, _ = await call_once(bench.service_request(0, TRACE_USER))
            wall = (time.perf_counter() - t0) * 1000
            await asyncio.sleep(0.3)
            with open(log_path, "rb") as f:
                f.seek(before)
                text = f.read().decode(errors="replace")
            # The service's in-process delivery worker polls every CHATBOTS_DELIVERY_POLL_SECONDS
            # (an autocommit claim on the delivery table, which no turn touches): a poll that
            # falls in the window is not the turn's, so it is counted apart.
            lines = text.splitlines()
            polls = [line for line in lines if _WORKER_POLL.search(line)]
            turn = parse_trace("\n".join(l for l in lines if not _WORKER_POLL.search(l)), status, wall)
            turn["worker_poll_round_trips"] = parse_trace("\n".join(polls), status, 0)["round_trips"]
            per_turn.append(turn)
    finally:
        bench.pg.psql("ALTER SYSTEM RESET log_min_duration_statement")
        bench.pg.psql("SELECT pg_reload_conf()")
    (bench.run_dir / "sql-trace.txt").write_text(
        "\n\n".join("\n".join(t["lines"]) for t in per_turn)
    )
    last = per_turn[-1]
    bench.results["sql_trace"] = {
        "turns": [{k: v for k, v in t.items() if k != "lines"} for t in per_turn],
        "statements_last_turn": last["statements"],
    }
    log(f"SQL per turn: {last['round_trips']} round trips, {last['transactions']} BEGINs, "
        f"{last['pings']} pre-pings, {last['parses']} parses; server time "
        f"{last['server_ms']:.2f} ms, wall {last['wall_ms']:.2f} ms")  # fmt: skip


_WORKER_POLL = re.compile(r"(statement|bind|execute)[^:]*: (UPDATE|SELECT .* FROM) delivery\b")


def parse_trace(text: str, status: Any, wall_ms: float) -> dict[str, Any]:
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
            if kind == "bind" and not sql:
                continue  # a named prepared statement's bind: logged without its text
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


def db_micro(bench: Bench) -> None:
    """Client-side CPU of one statement by layer (bench/dbmicro.py, its own process)."""
    n = 500 if bench.args.quick else 2000
    out = subprocess.run(
        [PY, "-m", "bench.dbmicro", "--n", str(n), "--json"], cwd=ROOT, env=bench.env,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if out.returncode != 0:
        log(f"dbmicro failed (skipped): {out.stderr.strip()[-500:]}")
        bench.results["db_micro"] = None
        return
    bench.results["db_micro"] = {"n": n, "ops": json.loads(out.stdout)}
    for op in bench.results["db_micro"]["ops"]:
        log(f"db micro: {op['cpu_us']:7.1f} µs CPU {op['wall_us']:7.1f} µs wall  {op['op']}")


def find_pyspy() -> str | None:
    for candidate in (os.environ.get("PY_SPY"), shutil.which("py-spy"),
                      str(Path(PY).parent / "py-spy"), "/tmp/pyspy/bin/py-spy"):  # fmt: skip
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


async def profile(bench: Bench) -> None:
    pyspy = find_pyspy()
    if not pyspy:
        log("profile: py-spy not found (pip install --target /tmp/pyspy py-spy); skipped")
        bench.results["profile"] = None
        return
    seconds = bench.budget.profile_seconds
    out = bench.run_dir / "profile-service.txt"
    log(f"profile: py-spy (--gil: CPU in Python) for {seconds:.0f}s during service, "
        "latency 0, c=64 ...")
    spy = bench.spawn("py-spy", [pyspy, "record", "--pid", str(bench.service_pid()), "--duration",
                                 str(int(seconds)), "--rate", "200", "--gil",
                                 "--format", "raw", "--output", str(out)])  # fmt: skip
    await asyncio.sleep(0.5)
    requests = [bench.service_request(0, u) for u in range(N_LOAD_USERS)]
    summary, _ = await bench.measure(requests, 64, 100_000, seconds + 1, 64)
    for _ in range(200):
        if not spy.alive():
            break
        await asyncio.sleep(0.1)
    bench.stop_proc(spy)
    if not out.exists():
        log(f"profile: py-spy wrote nothing:\n{spy.tail()}")
        bench.results["profile"] = None
        return
    prof = summarise_profile(out.read_text(), top=25)
    (bench.run_dir / "profile-summary.txt").write_text(render_profile(prof))
    bench.results["profile"] = {"load_under_profiler": summary, "summary": prof,
                                "raw": shown(out)}  # fmt: skip
    log(f"profile: {prof['samples']} samples; summary in {bench.run_dir / 'profile-summary.txt'}")
