"""The soak (issue 9): "10 minutes at concurrency 64 with the fake LLM at 200 ms: 0 errors; every
request's human and AI message stored (counted in the database afterwards); RSS flat (<= 5 %
growth after warm-up); p99 <= 1.5 x (p50 + LLM latency)."

A service of its own (``chatbots serve --workers 1``, the default settings: the delivery worker
in process), the ``latency-200`` chatbot, the 64 load users (one write key, hence one session,
per client). A warm-up of WARMUP_S seconds (``--quick``: WARMUP_QUICK_S) at concurrency 64, not
measured but its 200s counted for the database check, then ``--soak-seconds`` (default 600;
``--quick``: 60) measured with a timeline. The worker's VmRSS is read every SAMPLE_S seconds
through both phases, the CPU of the run's processes (and of everything else on this shared
machine) once per window.

The timeline is cut into windows: a minute each when the soak lasts at least 5 minutes, else a
sixth of it (at least 5 s), so that a short run still shows a trend. RSS growth = the median of
the first measured window's samples vs the median of the last window's (one sample is noise:
the allocator gives memory back in steps). The database check counts the messages of the soak
chatbot's sessions (human and AI apart) before the warm-up and after the measured phase: each
must have grown by exactly the number of 200s (warm-up included).

Each user's session grows by two messages a turn (~5,600 over 10 minutes at ~300 req/s); the
table's "msgs/session" column and the p50 trend (least squares over the windows) show whether
the latency climbs with the history.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from typing import Any

from bench.common import DISTURBED_OTHER_PCT, N_LOAD_USERS, log
from bench.harness import Bench
from bench.loadgen import percentile, run_load
from bench.sampling import CpuMeter, proc_status
from bench.trigger import running_service

LATENCY_MS = 200
CONCURRENCY = N_LOAD_USERS  # 64: one user (one key, one session) per client
WARMUP_S, WARMUP_QUICK_S = 45.0, 15.0
DEFAULT_SECONDS, QUICK_SECONDS = 600.0, 60.0
SAMPLE_S = 1.0
TARGET_RSS_GROWTH_PCT = 5.0
TARGET_P99_FACTOR = 1.5
# The p50 "climbs with the history" when the last window's is this much over the first's.
CLIMB_PCT = 10.0

Event = tuple[float, float, Any, str]  # loadgen: (sent at s, latency s, status, label)


# -- pure functions (tests/test_bench_soak.py) ------------------------------------------------
def window_seconds(duration_s: float) -> float:
    """A minute for a real soak; a sixth of a short one (at least 5 s)."""
    return 60.0 if duration_s >= 300 else max(5.0, round(duration_s / 6))


def is_ok(status: Any) -> bool:
    return isinstance(status, int) and 200 <= status < 300


def windows(
    events: Sequence[Event], rss: Sequence[tuple[float, float]], window_s: float, duration_s: float,
    messages_after: int = 0, sessions: int = 0,
) -> list[dict[str, Any]]:
    """One row per window of the measured phase (by the time each request was sent): requests,
    errors, req/s, p50/p99 of the successful ones, the median of the RSS samples (MB) taken in
    it, and, given the messages counted afterwards and the sessions they are in, the average
    messages per session at the window's end (every later 200 took two away)."""
    count = max(1, int(-(-duration_s // window_s)))  # ceil: the last window may be short
    lat: list[list[float]] = [[] for _ in range(count)]
    errors, sent = [0] * count, [0] * count
    for at, latency, status, _ in events:
        i = min(max(int(at // window_s), 0), count - 1)
        sent[i] += 1
        if is_ok(status):
            lat[i].append(latency * 1000.0)
        else:
            errors[i] += 1
    mem: list[list[float]] = [[] for _ in range(count)]
    for at, mb in rss:
        if 0 <= at < count * window_s:
            mem[min(int(at // window_s), count - 1)].append(mb)
    rows, ok_later = [], sum(len(x) for x in lat)
    for i in range(count):
        start, end = i * window_s, min((i + 1) * window_s, duration_s)
        ok = sorted(lat[i])
        ok_later -= len(ok)
        rows.append({
            "window": i + 1, "start_s": round(start, 1), "end_s": round(end, 1),
            "requests": sent[i], "errors": errors[i],
            "rps": round(sent[i] / (end - start), 1) if end > start else 0.0,
            "p50_ms": round(percentile(ok, 50), 1), "p99_ms": round(percentile(ok, 99), 1),
            "rss_mb": round(statistics.median(mem[i]), 1) if mem[i] else None,
            "msgs_per_session": round((messages_after - 2 * ok_later) / sessions, 1)
            if sessions else None,
        })  # fmt: skip
    return rows


def rss_growth(rss: Sequence[tuple[float, float]], window_s: float, duration_s: float) -> dict[str, Any]:
    """Median RSS (MB) of the first measured window's samples vs the last window's, in %."""
    first = [mb for at, mb in rss if 0 <= at < window_s]
    last = [mb for at, mb in rss if duration_s - window_s <= at <= duration_s]
    if not first or not last:
        return {"first_mb": None, "last_mb": None, "growth_pct": None}
    a, b = statistics.median(first), statistics.median(last)
    return {"first_mb": round(a, 1), "last_mb": round(b, 1), "growth_pct": round(100.0 * (b - a) / a, 2)}


def p50_trend(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How the p50 moved over the soak: first vs last window, and the least-squares slope in
    ms per minute, over the windows with successful requests that other processes left alone
    (``disturbed`` false), or over all of them when fewer than two were (a shared machine)."""
    answered = [r for r in rows if r["requests"] > r["errors"]]
    quiet = [r for r in answered if not r.get("disturbed")]
    used = quiet if len(quiet) >= 2 else answered
    points = [(r["start_s"] / 60.0, r["p50_ms"]) for r in used]
    if len(points) < 2:
        return {"first_ms": None, "last_ms": None, "change_pct": None, "slope_ms_per_min": None,
                "climbs": False, "windows": len(points), "undisturbed_only": False}  # fmt: skip
    xs, ys = [x for x, _ in points], [y for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)
    change = 100.0 * (ys[-1] - ys[0]) / ys[0] if ys[0] else 0.0
    return {"first_ms": ys[0], "last_ms": ys[-1], "change_pct": round(change, 1),
            "slope_ms_per_min": round(slope, 2), "climbs": change > CLIMB_PCT,
            "windows": len(points), "undisturbed_only": used is quiet}  # fmt: skip


# -- the database ------------------------------------------------------------------------------
def count_messages(bench: Bench) -> dict[str, int]:
    """Messages of the soak chatbot's sessions (its head or any of its versions), by role, and
    the sessions and the largest one."""
    bot = bench.chatbots[LATENCY_MS]
    row = bench.pg.psql(
        "WITH per_session AS (SELECT s.id, count(m.id) AS n,"
        " count(m.id) FILTER (WHERE m.role = 'human') AS human,"
        " count(m.id) FILTER (WHERE m.role = 'ai') AS ai"
        " FROM chat_session s LEFT JOIN chat_message m ON m.session_id = s.id"
        " WHERE s.chatbot_id IN (SELECT id FROM chatbot WHERE public_id = "
        f"'{bot}' OR working_version_id = (SELECT id FROM chatbot WHERE public_id = '{bot}'))"
        " GROUP BY s.id)"
        " SELECT coalesce(sum(human), 0), coalesce(sum(ai), 0), count(*), coalesce(max(n), 0)"
        " FROM per_session"
    )  # fmt: skip
    human, ai, sessions, largest = map(int, row.split("|"))
    # What the prompt holds of that history (the published version's settings).
    mode = bench.pg.psql(
        "SELECT history_mode || ' ' || max_history_length FROM chatbot WHERE is_published AND"
        f" working_version_id = (SELECT id FROM chatbot WHERE public_id = '{bot}')"
    )  # fmt: skip
    return {"human": human, "ai": ai, "sessions": sessions, "largest_session": largest,
            "history_setting": mode}  # fmt: skip


# -- the scenario ------------------------------------------------------------------------------
async def _sample(pid: int, meter: CpuMeter, measured: dict[str, float], window_s: float,
                  rss: list[tuple[float, float]], cpu: list[dict[str, float]],
                  stop: asyncio.Event) -> None:  # fmt: skip
    """VmRSS (absolute perf_counter, MB) every SAMPLE_S; once the measured phase has begun
    (``measured["t0"]``), the CPU of each window closed."""
    next_cpu = None
    while not stop.is_set():
        now = time.perf_counter()
        kb = proc_status(pid).get("VmRSS")
        if kb:
            rss.append((now, kb / 1024.0))
        t0 = measured.get("t0")
        if t0 is not None:
            if next_cpu is None:
                next_cpu = t0 + window_s
            elif now >= next_cpu:
                cpu.append(meter.stop())
                meter.start()
                next_cpu += window_s
        try:
            await asyncio.wait_for(stop.wait(), SAMPLE_S)
        except TimeoutError:
            pass


async def soak(bench: Bench) -> None:
    quick = bench.args.quick
    duration = bench.args.soak_seconds or (QUICK_SECONDS if quick else DEFAULT_SECONDS)
    warmup_s = WARMUP_QUICK_S if quick else WARMUP_S
    window_s = window_seconds(duration)
    before = count_messages(bench)
    async with running_service(bench, "service-soak", {}) as startup_s:
        pid = bench.service_pid()
        requests = [bench.service_request(LATENCY_MS, user) for user in range(CONCURRENCY)]
        meter = CpuMeter(pid, bench.pg, bench.fake.pid if bench.fake else 0)
        waited = await bench.wait_quiet(meter)
        log(f"soak: warm-up {warmup_s:g} s, then {duration:g} s at c={CONCURRENCY}, LLM {LATENCY_MS} ms")
        rss_abs: list[tuple[float, float]] = []
        cpu_windows: list[dict[str, float]] = []
        measured: dict[str, float] = {}
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample(pid, meter, measured, window_s, rss_abs, cpu_windows, stop))
        whole = CpuMeter(pid, bench.pg, bench.fake.pid if bench.fake else 0)

        def measure_start() -> None:
            measured["t0"] = time.perf_counter()
            meter.start()
            whole.start()

        try:
            warm = await run_load(requests, concurrency=CONCURRENCY, duration=warmup_s)
            result = await run_load(requests, concurrency=CONCURRENCY, duration=duration,
                                    on_measure_start=measure_start, record=True)  # fmt: skip
        finally:
            stop.set()
            await sampler
            if "t0" in measured:
                cpu_windows.append(meter.stop())  # the last window (the sampler closes the others)
        cpu_total = whole.stop()
        status = proc_status(pid)
        after = count_messages(bench)
    t0 = measured["t0"]
    rss = [(round(at - t0, 2), round(mb, 1)) for at, mb in rss_abs]
    summary = result.summary()
    added = after["human"] + after["ai"] - before["human"] - before["ai"]
    # By the time each request was sent: none is sent after ``duration`` (in-flight ones finish).
    rows = windows(result.events, rss, window_s, duration, after["human"] + after["ai"],
                   after["sessions"])  # fmt: skip
    for row, cpu in zip(rows, cpu_windows, strict=False):
        row["other_cpu_pct"] = cpu["other"]
        row["disturbed"] = cpu["other"] > DISTURBED_OTHER_PCT
    warm_ok = sum(n for s, n in warm.status_counts.items() if is_ok(s))
    answered = warm_ok + summary["ok"]
    stored = {
        "before": before, "after": after, "warmup_ok": warm_ok, "measured_ok": summary["ok"],
        "human_added": after["human"] - before["human"], "ai_added": after["ai"] - before["ai"],
        "messages_added": added,
        "ok": after["human"] - before["human"] == after["ai"] - before["ai"] == answered,
    }  # fmt: skip
    bench.results["soak"] = {
        "duration_s": duration, "warmup_s": warmup_s, "window_s": window_s,
        "concurrency": CONCURRENCY, "llm_latency_ms": LATENCY_MS, "startup_s": startup_s,
        "waited_for_quiet_s": waited, "summary": summary,
        "warmup": {"requests": warm.completed, "errors": warm.errors,
                   "status_counts": {str(k): v for k, v in warm.status_counts.items()}},
        "windows": rows, "rss": {
            **rss_growth(rss, window_s, duration),
            "peak_mb": round(max((mb for _, mb in rss), default=0.0), 1),
            "hwm_mb": round(status.get("VmHWM", 0) / 1024, 1),
            "samples": rss,
        },
        "p50_trend": p50_trend(rows), "cpu_pct_of_one_core": cpu_total, "stored": stored,
    }  # fmt: skip
    s, g = summary, bench.results["soak"]["rss"]
    log(f"soak: {s['requests']} requests, {s['errors']} errors (warm-up {warm.errors}), "
        f"{s['rps']} req/s, p50/p99 {s['p50_ms']}/{s['p99_ms']} ms; RSS {g['first_mb']} -> "
        f"{g['last_mb']} MB ({g['growth_pct']} %), peak {g['peak_mb']} MB; stored {stored}")  # fmt: skip


# -- the report --------------------------------------------------------------------------------
def _label(sk: dict[str, Any]) -> str:
    return f"Soak ({sk['duration_s']:g} s at c={sk['concurrency']}, LLM {sk['llm_latency_ms']} ms)"


def targets(results: dict[str, Any], add: Any) -> None:
    sk = results.get("soak")
    if not sk:
        return
    s, st, g = sk["summary"], sk["stored"], sk["rss"]
    errors = s["errors"] + sk["warmup"]["errors"]
    add(f"{_label(sk)}: 0 errors (warm-up included)",
        f"{s['errors']} in {s['requests']:,} measured, {sk['warmup']['errors']} in "
        f"{sk['warmup']['requests']:,} warm-up; status {s['status_counts']}", errors == 0)  # fmt: skip
    add(f"{_label(sk)}: every request's human and AI message stored",
        f"human +{st['human_added']:,}, AI +{st['ai_added']:,} for {st['warmup_ok'] + st['measured_ok']:,} "
        "answered 200", st["ok"])  # fmt: skip
    growth = g["growth_pct"]
    add(f"{_label(sk)}: RSS growth <= {TARGET_RSS_GROWTH_PCT:g} % (median of the first measured "
        "window vs the last)",
        f"{g['first_mb']} -> {g['last_mb']} MB ({growth:+.2f} %), peak {g['peak_mb']} MB"
        if growth is not None else "-",
        growth is not None and growth <= TARGET_RSS_GROWTH_PCT)  # fmt: skip
    bound = TARGET_P99_FACTOR * (s["p50_ms"] + sk["llm_latency_ms"])
    add(f"{_label(sk)}: p99 <= {TARGET_P99_FACTOR:g} x (p50 + {sk['llm_latency_ms']} ms)",
        f"p99 {s['p99_ms']} ms vs {bound:.1f} ms (p50 {s['p50_ms']} ms)",
        s["ok"] > 0 and s["p99_ms"] <= bound)  # fmt: skip


def _dash(value: Any) -> Any:
    return "-" if value is None else value


def _trend_text(tr: dict[str, Any]) -> str:
    if tr["first_ms"] is None:
        return "p50 trend: not measured (fewer than two windows)"
    moved = f"{tr['first_ms']} -> {tr['last_ms']} ms ({tr['change_pct']:+} %)"
    verdict = (f"p50 CLIMBS over the soak: {moved}" if tr["climbs"]
               else f"p50 does not climb over {CLIMB_PCT:g} %: {moved}")  # fmt: skip
    which = "undisturbed " if tr["undisturbed_only"] else ""
    return (f"{verdict}; least-squares slope {tr['slope_ms_per_min']} ms per minute over "
            f"{tr['windows']} {which}windows")  # fmt: skip


def section(results: dict[str, Any]) -> list[str]:
    sk = results.get("soak")
    if not sk:
        return []
    s, g, st, cpu = sk["summary"], sk["rss"], sk["stored"], sk["cpu_pct_of_one_core"]
    warm = sk["warmup"]
    out = [
        f"### {_label(sk)}",
        "",
        f"{s['requests']:,} requests in {s['elapsed_s']} s ({s['rps']} req/s), {s['errors']} errors "
        f"(status {s['status_counts']}); p50 / p95 / p99 / max {s['p50_ms']} / {s['p95_ms']} / "
        f"{s['p99_ms']} / {s['max_ms']} ms. Warm-up {sk['warmup_s']:g} s first "
        f"({warm['requests']:,} requests, {warm['errors']} errors), not measured. CPU (% of one "
        f"core) over the measured phase: service {cpu['service']}, PostgreSQL {cpu['postgres']}, "
        f"other processes {cpu['other']}.",
        "",
        "| window (s) | req/s | errors | p50 ms | p99 ms | RSS MB (median) | msgs/session (end) "
        "| other CPU % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for r in sk["windows"]:
        flag = " (disturbed)" if r.get("disturbed") else ""
        out.append(f"| {r['start_s']:g}–{r['end_s']:g} | {r['rps']} | {r['errors']} | {r['p50_ms']} | "
                   f"{r['p99_ms']} | {_dash(r['rss_mb'])} | {_dash(r['msgs_per_session'])} | "
                   f"{r.get('other_cpu_pct', '-')}{flag} |")  # fmt: skip
    out += [
        "",
        f"RSS: {g['first_mb']} MB (median of the first measured window's samples) -> {g['last_mb']} "
        f"MB (the last window's): {_dash(g['growth_pct'])} %; peak {g['peak_mb']} MB (sampled every "
        f"{SAMPLE_S:g} s, warm-up included), VmHWM {g['hwm_mb']} MB.",
        "",
        f"History: {_trend_text(sk['p50_trend'])}; each session grew to "
        f"{st['after']['largest_session']:,} messages (the chatbot's history setting: "
        f"{st['after']['history_setting']}). A window is disturbed when other processes used over "
        f"{DISTURBED_OTHER_PCT:g} % of a core in it.",
        "",
        f"Database (the soak chatbot's sessions): human {st['before']['human']:,} -> "
        f"{st['after']['human']:,}, AI {st['before']['ai']:,} -> {st['after']['ai']:,}; 200s "
        f"{st['warmup_ok']:,} warm-up + {st['measured_ok']:,} measured: "
        + ("every one stored." if st["ok"] else "MISMATCH."),
        "",
    ]  # fmt: skip
    return out
