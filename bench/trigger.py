"""The trigger scenarios (issue 7): ``POST /api/trigger_bot`` next to a first incoming_message,
and its deliveries end to end through the fake Telegram Bot API.

1. ``throughput``: ONE worker (``chatbots serve --workers 1``) with the delivery worker OFF
   (``CHATBOTS_WORKER_IN_PROCESS=false``: only the HTTP side is measured), concurrency 32, LLM
   0 ms. Each trial measures two cells back to back on that worker: new users' first
   ``incoming_message`` (a new participant and session per request, each user's own write key)
   and ``trigger_bot`` with ``message_text`` to a new telegram participant per request (the
   admin's key); their order alternates from trial to trial (this VM drifts over minutes). The
   figure is the ratio trigger/incoming req/s of the trial with the median ratio. The
   deliveries the cells make stay ``pending`` (nothing sends them) and are set aside
   (``skipped``) afterwards, so the next scenario's worker never sees them.
2. ``deliveries``: the service with the worker ON (in process, as deployed by default), its
   Telegram sender pointed at ``bench/fake_telegram.py`` (sendMessage answered after 50 ms).
   Per round, a service of its own (CHATBOTS_DELIVERY_CONCURRENCY not set, i.e. 8, then a
   higher value), a warm-up of triggers delivered and then forgotten, then N triggers as fast
   as the load generator sends them (concurrency 32), timed from the first trigger until the
   database shows every one of them ``sent``; the fake is polled every 50 ms (for the
   timeline), the database every 20 ms once the fake has answered them all. Checked at the
   end: every delivery row of the round ``sent`` after one attempt, with its own message and
   provider message id; the fake received each chat's message exactly once.

With the profile step on, ``profile`` records py-spy on the worker during a trigger-only load
(worker off) and during a deliveries round (worker on, default concurrency), and samples
PostgreSQL's wait events (pg_stat_activity) during both.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from bench.common import (
    DEFAULT_DELIVERY_CONCURRENCY, DELIVERY_CONCURRENCIES, FAKE_TELEGRAM_LATENCY_MS, HOST,
    TRIGGER_CONCURRENCY, TRIGGER_USER_PREFIX, cell_warmup, log, shown,
)  # fmt: skip
from bench.harness import Bench
from bench.loadgen import Client, Request, run_load
from bench.pyspy_summary import render as render_profile
from bench.pyspy_summary import summarise as summarise_profile
from bench.sampling import CpuMeter, proc_status

WORKER_OFF = {"CHATBOTS_WORKER_IN_PROCESS": "false"}
# Bounds: a round whose deliveries are not all sent by then is reported as incomplete.
DRAIN_TIMEOUT_S = 180.0
TRIGGER_PHASE_CAP_S = 120.0
FAKE_POLL_S = 0.05
DB_POLL_S = 0.02


async def trigger_scenarios(bench: Bench, profile: bool) -> None:
    """Both scenarios (and their profile), each on services of their own: the run's main
    service (worker in process, default) is stopped first so that no other worker claims."""
    if bench.service is not None:
        bench.stop_proc(bench.service)
        bench.service, bench.service_port = None, 0
    await throughput(bench)
    retire_pending(bench)
    await deliveries(bench)
    await delivery_sql_trace(bench)
    if profile:
        await profile_trigger(bench)


@contextlib.asynccontextmanager
async def running_service(bench: Bench, name: str, env: dict[str, str]) -> AsyncIterator[float]:
    """A service of its own for the block (the bench's ``service`` meanwhile), stopped after."""
    saved = bench.service, bench.service_port
    proc, port, seconds = bench.start_service(name, env)
    bench.service, bench.service_port = proc, port
    try:
        yield seconds
    finally:
        bench.stop_proc(proc)
        bench.service, bench.service_port = saved


def dsn(bench: Bench) -> str:
    return bench.pg.url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _call(request: Request) -> tuple[int | str, bytes]:
    client = Client(request, timeout=30.0)
    try:
        return await client.call()
    finally:
        client.close()


# ---------------------------------------------------------------------------------------------
# 1. throughput: trigger_bot vs a first incoming_message, same worker, same run


async def throughput(bench: Bench) -> None:
    b = bench.budget
    trials = []
    async with running_service(bench, "service-trigger", WORKER_OFF):
        status, body = await _call(bench.trigger_request("tg-smoke"))
        reply = json.loads(body) if status == 200 else {}
        if status != 200 or reply.get("channel") != "telegram" or not reply.get("delivery_id"):
            raise RuntimeError(f"trigger smoke request failed: {status} {body[:500]!r}")
        log(f"trigger smoke: 200, delivery {reply['delivery_id']}")
        for trial in range(1, b.trigger_trials + 1):
            order = ("incoming", "trigger") if trial % 2 else ("trigger", "incoming")
            cells = {kind: await _throughput_cell(bench, kind, trial) for kind in order}
            ratio = round(cells["trigger"]["rps"] / cells["incoming"]["rps"], 3) \
                if cells["incoming"]["rps"] else 0.0  # fmt: skip
            trials.append({"trial": trial, "order": list(order), "ratio_rps": ratio,
                           "cells": [cells["incoming"], cells["trigger"]]})  # fmt: skip
            log(f"trigger trial {trial}: trigger/incoming req/s {ratio}")
    median = sorted(trials, key=lambda t: t["ratio_rps"])[(len(trials) - 1) // 2]
    for i, cell in enumerate(median["cells"]):
        cell["trials_rps"] = [t["cells"][i]["rps"] for t in trials]
    sent = {kind: sum(c["warmup_requests"] + c["requests"] for t in trials for c in t["cells"]
                      if c["target"] == kind) for kind in ("incoming", "trigger")}  # fmt: skip
    bench.results["trigger"] = {
        "concurrency": TRIGGER_CONCURRENCY,
        "median_trial": median["trial"],
        "ratio_rps": median["ratio_rps"],
        "trials_ratio_rps": [t["ratio_rps"] for t in trials],
        "trials_order": [t["order"] for t in trials],
        "cells": median["cells"],
        "all_trials": trials,
        "service_env": WORKER_OFF,
        "check": _check_throughput(bench, sent["trigger"], sent["incoming"]),
    }
    log(f"trigger: median trial {median['trial']}, trigger/incoming {median['ratio_rps']} "
        f"(trials {[t['ratio_rps'] for t in trials]})")  # fmt: skip


async def _throughput_cell(bench: Bench, kind: str, trial: int) -> dict[str, Any]:
    b, c = bench.budget, TRIGGER_CONCURRENCY
    warmup = cell_warmup(c)
    if kind == "incoming":
        requests = [bench.trigger_user_request(i)
                    for i in bench.take_trigger_users(warmup + b.trigger_requests)]  # fmt: skip
    else:
        requests = [bench.trigger_request(f"tg-t{trial}-{i:05d}")
                    for i in range(warmup + b.trigger_requests)]  # fmt: skip
    summary, _ = await bench.measure(requests, c, b.trigger_requests, b.cell_seconds, warmup,
                                     shared=True)  # fmt: skip
    summary |= {"target": kind, "trial": trial, "llm_latency_ms": 0}
    cpu = summary["cpu_pct_of_one_core"]
    log(f"trigger trial {trial} {kind:8s} c={c}: {summary['rps']:8.1f} req/s p50 "
        f"{summary['p50_ms']:7.2f} p95 {summary['p95_ms']:7.2f} p99 {summary['p99_ms']:7.2f} ms "
        f"errors {summary['errors']} | svc CPU/req {summary.get('service_cpu_ms_per_request')} ms"
        f" | peak RSS {summary.get('rss_peak_mb')} MB | CPU% svc {cpu['service']} pg "
        f"{cpu['postgres']} gen {cpu['loadgen']} other {cpu['other']}")  # fmt: skip
    return summary


def _check_throughput(bench: Bench, triggers: int, incoming: int) -> dict[str, Any] | None:
    """That each request did what it says: every trigger made a telegram participant, a
    session and one pending delivery (and no message: the worker was off); every new user's
    first message a participant and a session with its question and answer."""
    try:
        trig = bench.pg.psql(
            "SELECT count(DISTINCT p.id), count(DISTINCT s.id), count(d.id),"
            " count(d.id) FILTER (WHERE d.status = 'pending'),"
            " (SELECT count(*) FROM chat_message m JOIN chat_session s2 ON s2.id = m.session_id"
            "  JOIN participant p2 ON p2.id = s2.participant_id"
            "  WHERE p2.platform = 'telegram' AND p2.identifier LIKE 'tg-t%')"
            " FROM participant p JOIN chat_session s ON s.participant_id = p.id"
            " JOIN delivery d ON d.session_id = s.id"
            " WHERE p.platform = 'telegram' AND p.identifier LIKE 'tg-t%'"
        )  # fmt: skip
        inc = bench.pg.psql(
            "SELECT count(DISTINCT p.id), count(DISTINCT s.id), count(m.id) FROM participant p"
            " JOIN chat_session s ON s.participant_id = p.id"
            " LEFT JOIN chat_message m ON m.session_id = s.id"
            f" WHERE p.identifier LIKE '{TRIGGER_USER_PREFIX}-%'"
        )  # fmt: skip
    except RuntimeError as exc:  # the schema is the app's: report, do not fail the run
        log(f"trigger: database check skipped: {exc}")
        return None
    t_part, t_sess, t_del, t_pending, t_msgs = map(int, trig.split("|"))
    i_part, i_sess, i_msgs = map(int, inc.split("|"))
    ok_t = t_part == t_sess == t_del == t_pending == triggers and t_msgs == 0
    ok_i = i_part == i_sess == incoming and i_msgs == 2 * incoming
    check = {
        "triggers": triggers, "trigger_participants": t_part, "trigger_sessions": t_sess,
        "trigger_deliveries": t_del, "trigger_pending": t_pending, "trigger_messages": t_msgs,
        "incoming": incoming, "incoming_participants": i_part, "incoming_sessions": i_sess,
        "incoming_messages": i_msgs, "ok": ok_t and ok_i,
    }  # fmt: skip
    log(f"trigger: database check {check}")
    return check


def retire_pending(bench: Bench) -> int:
    """The throughput scenario's deliveries (never to be sent: the worker was off) are set
    aside as ``skipped``, so that the deliveries scenario's worker sends only its own."""
    out = bench.pg.psql(
        "WITH r AS (UPDATE delivery SET status = 'skipped', updated_at = now(), last_error ="
        " 'bench: made by the trigger throughput scenario (worker off), never sent'"
        " WHERE status IN ('pending', 'sending') RETURNING 1) SELECT count(*) FROM r"
    )  # fmt: skip
    log(f"set aside {out} pending deliveries of the throughput scenario")
    return int(out)


# ---------------------------------------------------------------------------------------------
# 2. deliveries end to end


def _delivery_env(setting: int | None) -> dict[str, str]:
    env = {"CHATBOTS_WORKER_IN_PROCESS": "true"}
    if setting is not None:
        env["CHATBOTS_DELIVERY_CONCURRENCY"] = str(setting)
    return env


def _setting_label(setting: int | None) -> str:
    return f"{DEFAULT_DELIVERY_CONCURRENCY} (default)" if setting is None else str(setting)


async def deliveries(bench: Bench) -> None:
    b = bench.budget
    rounds: list[dict[str, Any]] = []
    for trial in range(1, b.delivery_trials + 1):
        for setting in DELIVERY_CONCURRENCIES:
            name = f"service-deliveries-{setting or 'default'}-{trial}"
            async with running_service(bench, name, _delivery_env(setting)):
                rounds.append(await _delivery_round(bench, setting, trial, b.delivery_count))
    per_setting = []
    for setting in DELIVERY_CONCURRENCIES:
        mine = [r for r in rounds if r["setting"] == setting]
        median = dict(sorted(mine, key=lambda r: r["deliveries_per_s"])[(len(mine) - 1) // 2])
        median["trials_deliveries_per_s"] = [r["deliveries_per_s"] for r in mine]
        median["trials_drain_s"] = [r["drain_s"] for r in mine]
        median["trials_ok"] = [r["check"]["ok"] for r in mine]
        per_setting.append(median)
    bench.results["deliveries"] = {
        "count": b.delivery_count,
        "trigger_concurrency": TRIGGER_CONCURRENCY,
        "fake_latency_ms": FAKE_TELEGRAM_LATENCY_MS,
        "settings": per_setting,
        "rounds": rounds,
    }


async def fake_stats(client: Client, chats: bool = False) -> dict[str, Any]:
    status, body = await client.call(client.request if not chats else Request.build(
        "GET", f"http://{client.request.host}:{client.request.port}/_stats?chats=1"))  # fmt: skip
    if status != 200:
        raise RuntimeError(f"fake Telegram /_stats: {status} {body[:200]!r}")
    return json.loads(body)


async def reset_fake(bench: Bench) -> None:
    status, _ = await _call(Request.build(
        "DELETE", f"http://{HOST}:{bench.fake_telegram_port}/_stats"))  # fmt: skip
    if status != 200:
        raise RuntimeError(f"fake Telegram reset: {status}")


async def wait_sent(conn: Any, pattern: str, n: int, deadline: float) -> int:
    """Poll the database until ``n`` deliveries to recipients LIKE ``pattern`` are sent (or the
    deadline); returns the last count."""
    sent = 0
    while time.perf_counter() < deadline:
        sent = await conn.fetchval(
            "SELECT count(*) FROM delivery WHERE recipient LIKE $1 AND status = 'sent'", pattern
        )
        if sent >= n:
            break
        await asyncio.sleep(DB_POLL_S)
    return sent


async def _delivery_round(
    bench: Bench, setting: int | None, trial: int, n: int, on_start: Any = None
) -> dict[str, Any]:
    """One round on the bench's service (worker on): warm-up, then ``n`` triggers timed until
    all are sent. ``on_start()`` is called just before the first measured trigger."""
    import asyncpg

    c = TRIGGER_CONCURRENCY
    tag = f"tgd-{setting or 'd'}-{trial}"
    pid = bench.service_pid()
    conn = await asyncpg.connect(dsn(bench))
    stats_client = Client(Request.build("GET", f"http://{HOST}:{bench.fake_telegram_port}/_stats"),
                          timeout=10.0)  # fmt: skip
    try:
        # Warm-up: the worker's first claims, connections and statements, then forgotten.
        warm = [bench.trigger_request(f"{tag}-w{i:04d}") for i in range(cell_warmup(c))]
        await run_load(warm, concurrency=c, total=len(warm), duration=60, shared=True)
        got = await wait_sent(conn, f"{tag}-w%", len(warm), time.perf_counter() + 60)
        if got < len(warm):
            raise RuntimeError(f"deliveries warm-up: only {got} of {len(warm)} sent in 60 s")
        await reset_fake(bench)

        requests = [bench.trigger_request(f"{tag}-m{i:05d}") for i in range(n)]
        meter = CpuMeter(pid, bench.pg, bench.fake_telegram.pid if bench.fake_telegram else 0)
        waited = await bench.wait_quiet(meter)
        timeline: list[tuple[float, int]] = []
        peak_rss = {"kb": 0}
        stop = asyncio.Event()

        async def poll_fake(t0: float) -> None:
            # A connection of its own: one request at a time per connection.
            client = Client(stats_client.request, timeout=10.0)
            try:
                while not stop.is_set():
                    stats = await fake_stats(client)
                    timeline.append((round(time.perf_counter() - t0, 3), stats["answered"]))
                    peak_rss["kb"] = max(peak_rss["kb"], proc_status(pid).get("VmRSS", 0))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), FAKE_POLL_S)
            finally:
                client.close()

        if on_start is not None:
            on_start()
        meter.start()
        wall0, t0 = time.time(), time.perf_counter()
        poller = asyncio.create_task(poll_fake(t0))
        try:
            result = await run_load(requests, concurrency=c, total=n, duration=TRIGGER_PHASE_CAP_S,
                                    shared=True)  # fmt: skip
            t_triggered = time.perf_counter()
            at_triggered = (await fake_stats(stats_client))["answered"]
            deadline = t_triggered + DRAIN_TIMEOUT_S
            while time.perf_counter() < deadline:
                if (await fake_stats(stats_client))["answered"] >= n:
                    break
                await asyncio.sleep(DB_POLL_S)
            sent = await wait_sent(conn, f"{tag}-m%", n, deadline)
            t_end = time.perf_counter()
        finally:
            stop.set()
            await poller
        cpu = meter.stop()
        fake = await fake_stats(stats_client, chats=True)
        row = await conn.fetchrow(
            "SELECT count(*) AS rows, count(*) FILTER (WHERE status = 'sent') AS sent,"
            " count(*) FILTER (WHERE status <> 'sent') AS not_sent,"
            " count(*) FILTER (WHERE attempts <> 1) AS retried,"
            " count(DISTINCT provider_message_id) AS provider_ids,"
            " count(DISTINCT message_id) AS messages,"
            " extract(epoch FROM max(sent_at) - min(created_at)) AS db_span_s,"
            " extract(epoch FROM max(created_at) - min(created_at)) AS db_created_span_s,"
            " percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM sent_at - created_at))"
            "  AS created_to_sent_p50_s,"
            " percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM sent_at - created_at))"
            "  AS created_to_sent_p99_s"
            " FROM delivery WHERE recipient LIKE $1", f"{tag}-m%",
        )  # fmt: skip
        statuses = dict(await conn.fetch(
            "SELECT status, count(*) FROM delivery WHERE recipient LIKE $1 GROUP BY status",
            f"{tag}-m%"))  # fmt: skip
    finally:
        stats_client.close()
        await conn.close()

    summary = result.summary()
    wanted = {f"{tag}-m{i:05d}" for i in range(n)}
    per_chat = {k: v for k, v in fake["per_chat"].items() if k.startswith(f"{tag}-m")}
    once = sum(1 for k in wanted if per_chat.get(k) == 1)
    fake_check = {
        "received": fake["received"], "answered": fake["answered"], "errors": fake["errors"],
        "chats": len(per_chat), "exactly_once": once, "duplicates": fake["duplicates"],
        "missing": len(wanted - per_chat.keys()), "unexpected": len(per_chat.keys() - wanted),
    }  # fmt: skip
    db = {k: (float(v) if v is not None and k.endswith("_s") else v) for k, v in dict(row).items()}
    ok = (db["rows"] == db["sent"] == db["provider_ids"] == db["messages"] == n
          and db["retried"] == 0 and summary["errors"] == 0
          and fake["received"] == fake["answered"] == once == n and fake["errors"] == 0)  # fmt: skip
    e2e = t_end - t0
    trigger_s = t_triggered - t0
    drain = t_end - t_triggered
    per_second = Counter(int(t - wall0) for t in fake["answered_at"])
    last_answer = (fake["last_at"] - wall0) if fake["last_at"] else None
    out = {
        "setting": setting,
        "setting_label": _setting_label(setting),
        "trial": trial,
        "deliveries": n,
        "complete": sent >= n,
        "e2e_s": round(e2e, 3),
        "deliveries_per_s": round(n / e2e, 1) if sent >= n else round(sent / e2e, 1),
        "trigger_phase_s": round(trigger_s, 3),
        "trigger_rps": round(n / trigger_s, 1),
        "trigger_p50_ms": summary["p50_ms"], "trigger_p95_ms": summary["p95_ms"],
        "trigger_p99_ms": summary["p99_ms"], "trigger_errors": summary["errors"],
        "sent_during_triggers": at_triggered,
        "drain_s": round(drain, 3),
        "drain_sends_per_s": round((n - at_triggered) / drain, 1) if drain > 0 else None,
        "sends_per_s_while_triggering": round(at_triggered / trigger_s, 1),
        "last_fake_answer_s": round(last_answer, 3) if last_answer is not None else None,
        "sends_by_second": [per_second.get(s, 0) for s in range(int(max(per_second, default=0)) + 1)],
        "timeline": timeline,
        "cpu_pct_of_one_core": cpu,
        "service_cpu_ms_per_delivery": round(10.0 * cpu["service"] * e2e / n, 2),
        "rss_peak_mb": round(peak_rss["kb"] / 1024, 1),
        "waited_for_quiet_s": waited,
        "db": db,
        "statuses": statuses,
        "fake": fake_check,
        "check": {"ok": ok},
        "trigger_load": summary,
    }
    log(f"deliveries concurrency {out['setting_label']} trial {trial}: {n} in {e2e:.2f} s = "
        f"{out['deliveries_per_s']} deliveries/s; triggers {trigger_s:.2f} s ({out['trigger_rps']} "
        f"req/s, p50 {summary['p50_ms']} ms), {at_triggered} sent by then; drain {drain:.2f} s "
        f"({out['drain_sends_per_s']}/s); svc CPU {out['service_cpu_ms_per_delivery']} ms/delivery;"
        f" CPU% svc {cpu['service']} pg {cpu['postgres']} tg {cpu['fake_llm']} gen "
        f"{cpu['loadgen']} other {cpu['other']}; check {'ok' if ok else 'FAILED'} "
        f"(db {db}, statuses {statuses}, fake {fake_check})")  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------
# SQL of one trigger and its delivery


# Statements (their first line, as the log shows them) only a trigger request runs (on the
# driver pool's connections) and only the delivery worker runs (on the SQLAlchemy engine's):
# each PostgreSQL backend is one or the other, so its BEGIN/COMMITs go with its statements.
_TRIGGER_SQL = ("INSERT INTO participant", "INSERT INTO delivery", "api_key", "WITH used AS",
                "SELECT chatbot.id AS head_id")  # fmt: skip
_WORKER_SQL = ("UPDATE delivery", "FROM delivery", "SELECT delivery.", "INSERT INTO chat_message",
               "SELECT channel.config", "UPDATE chat_session")  # fmt: skip


def _attribute(lines: list[str]) -> list[tuple[str, str]]:
    """Each logged statement of one backend, with whose it is (the trigger request's or the
    worker's: one pooled connection serves both), by its text; a transaction's BEGIN and
    COMMIT go with the statements inside it."""
    def kind_of(line: str) -> str | None:
        if any(k in line for k in _TRIGGER_SQL):
            return "trigger"
        if any(k in line for k in _WORKER_SQL):
            return "worker"
        return None

    out: list[tuple[str, str]] = []
    pending: list[str] = []  # a BEGIN waiting for the first statement of its transaction
    current: str | None = None
    for line in lines:
        if "statement: BEGIN" in line or "statement BEGIN" in line:
            pending.append(line)
            continue
        kind = kind_of(line) or current
        if pending:
            out += [(kind or "other", begin) for begin in pending]
            pending = []
            current = kind
        out.append((kind or "other", line))
        if "COMMIT" in line or "ROLLBACK" in line:
            current = None
    out += [("other", begin) for begin in pending]
    return out


async def delivery_sql_trace(bench: Bench, deliveries: int = 3) -> None:
    """PostgreSQL's statement log of single triggers and their deliveries, one at a time, on
    an idle service (worker on, default concurrency): round trips and server time of the
    trigger request and of the worker per delivery, and the time from the trigger to its
    delivery sent (the fake Telegram answers in 50 ms)."""
    import re

    from bench.measurements import parse_trace

    log_path = bench.pg.log_path()
    traces = []
    async with running_service(bench, "service-deliveries-trace", _delivery_env(None)):
        # Warm: the worker's pool and statement caches, as in a round's warm-up.
        warm = [bench.trigger_request(f"tgs-w{i:03d}") for i in range(20)]
        await run_load(warm, concurrency=4, total=len(warm), duration=30, shared=True)
        stats_client = Client(Request.build(
            "GET", f"http://{HOST}:{bench.fake_telegram_port}/_stats"), timeout=10.0)  # fmt: skip
        try:
            deadline = time.perf_counter() + 30
            while (await fake_stats(stats_client))["answered"] < len(warm) and \
                    time.perf_counter() < deadline:  # fmt: skip
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            bench.pg.psql("ALTER SYSTEM SET log_min_duration_statement = 0")
            bench.pg.psql("SELECT pg_reload_conf()")
            await asyncio.sleep(0.5)
            try:
                for i in range(deliveries):
                    await reset_fake(bench)
                    before = log_path.stat().st_size
                    t0 = time.perf_counter()
                    status, _ = await _call(bench.trigger_request(f"tgs-{i:03d}"))
                    t_trigger = time.perf_counter()
                    while (await fake_stats(stats_client))["answered"] < 1 and \
                            time.perf_counter() < t0 + 10:  # fmt: skip
                        await asyncio.sleep(0.002)
                    t_sent = time.perf_counter()
                    await asyncio.sleep(0.5)  # the outcome's write, and the log
                    with open(log_path, "rb") as f:
                        f.seek(before)
                        text = f.read().decode(errors="replace")
                    by_pid: dict[str, list[str]] = {}
                    for line in text.splitlines():
                        match = re.search(r"\[(\d+)\]", line)
                        if match and "duration:" in line:
                            by_pid.setdefault(match.group(1), []).append(line)
                    parts: dict[str, list[str]] = {"trigger": [], "worker": [], "other": []}
                    for lines in by_pid.values():
                        for kind, line in _attribute(lines):
                            parts[kind].append(line)
                    trace = {"status": status,
                             "trigger_ms": round((t_trigger - t0) * 1000, 2),
                             "trigger_to_fake_answer_ms": round((t_sent - t0) * 1000, 2)}  # fmt: skip
                    for kind, lines in parts.items():
                        trace[kind] = parse_trace("\n".join(lines), status, 0.0)
                    # Claims (UPDATE ... WHERE id IN (SELECT ... SKIP LOCKED)): one took the
                    # delivery, any other found nothing (a wake-up with nothing new to take).
                    trace["worker_claims"] = sum(
                        1 for sql in trace["worker"]["statements"]
                        if "attempts=(delivery.attempts" in sql
                    )  # fmt: skip
                    traces.append(trace)
            finally:
                bench.pg.psql("ALTER SYSTEM RESET log_min_duration_statement")
                bench.pg.psql("SELECT pg_reload_conf()")
        finally:
            stats_client.close()
    (bench.run_dir / "sql-trace-delivery.txt").write_text("\n\n".join(
        f"# delivery {i}: {kind}\n" + "\n".join(t[kind]["lines"])
        for i, t in enumerate(traces) for kind in ("trigger", "worker", "other")
    ))  # fmt: skip
    last = traces[-1]
    strip = lambda t: {k: v for k, v in t.items() if k != "lines"}  # noqa: E731
    bench.results["delivery_sql_trace"] = {
        "deliveries": [{k: strip(v) if isinstance(v, dict) else v for k, v in t.items()}
                       for t in traces],
        "fake_latency_ms": FAKE_TELEGRAM_LATENCY_MS,
        "file": shown(bench.run_dir / "sql-trace-delivery.txt"),
    }  # fmt: skip
    log(f"SQL per delivery: trigger request {last['trigger']['round_trips']} round trips "
        f"({last['trigger']['server_ms']:.2f} ms server, {last['trigger_ms']} ms wall); worker "
        f"{last['worker']['round_trips']} round trips ({last['worker']['server_ms']:.2f} ms "
        f"server; {last['worker_claims']} claims); other {last['other']['round_trips']}; trigger → fake answered "
        f"{last['trigger_to_fake_answer_ms']} ms")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# profile


async def _sample_pg_waits(bench: Bench, stop: asyncio.Event) -> dict[str, Any]:
    """What PostgreSQL's backends of this database are doing, every 50 ms: active and waiting
    (wait_event_type:wait_event), and idle in transaction."""
    import asyncpg

    conn = await asyncpg.connect(dsn(bench))
    seen: Counter[str] = Counter()
    samples = 0
    try:
        while not stop.is_set():
            rows = await conn.fetch(
                "SELECT state, wait_event_type, wait_event FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND backend_type = 'client backend'"
            )  # fmt: skip
            samples += 1
            for state, wtype, wevent in rows:
                if state == "idle":
                    continue
                seen[f"{state}: {wtype}:{wevent}" if wtype else f"{state}: on CPU"] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)
    finally:
        await conn.close()
    return {"samples": samples,
            "per_sample": {k: round(v / samples, 2) for k, v in seen.most_common(15)}}  # fmt: skip


async def _profiled(bench: Bench, name: str, work: Any) -> dict[str, Any] | None:
    """py-spy on the bench's service while ``work()`` runs, and PostgreSQL's wait events."""
    from bench.measurements import find_pyspy

    pyspy = find_pyspy()
    if not pyspy:
        log("trigger profile: py-spy not found (pip install --target /tmp/pyspy py-spy); skipped")
        return None
    out = bench.run_dir / f"profile-{name}.txt"
    seconds = int(bench.budget.profile_seconds)
    spies = []

    def start() -> None:  # when the measured load begins (after its warm-up)
        spies.append(bench.spawn(f"py-spy-{name}", [
            pyspy, "record", "--pid", str(bench.service_pid()), "--duration", str(seconds),
            "--rate", "200", "--gil", "--format", "raw", "--output", str(out),
        ]))  # fmt: skip

    stop = asyncio.Event()
    waits = asyncio.create_task(_sample_pg_waits(bench, stop))
    try:
        load = await work(seconds, start)
    finally:
        stop.set()
        pg_waits = await waits
    spy = spies[0] if spies else None
    for _ in range(300):
        if spy is None or not spy.alive():
            break
        await asyncio.sleep(0.1)
    if spy is not None:
        bench.stop_proc(spy)
    if spy is None or not out.exists():
        log(f"trigger profile {name}: py-spy wrote nothing:\n{spy.tail() if spy else ''}")
        return None
    prof = summarise_profile(out.read_text(), top=25)
    summary_path = bench.run_dir / f"profile-{name}-summary.txt"
    summary_path.write_text(render_profile(prof) + "\n\nPostgreSQL backends (average per 50 ms "
                            "sample, not idle):\n" + "\n".join(
                                f"  {v:6.2f}  {k}" for k, v in pg_waits["per_sample"].items()))  # fmt: skip
    log(f"trigger profile {name}: {prof['samples']} samples; summary in {summary_path}")
    return {"load_under_profiler": load, "summary": prof, "raw": shown(out),
            "summary_path": shown(summary_path), "pg_waits": pg_waits, "seconds": seconds}  # fmt: skip


async def profile_trigger(bench: Bench) -> None:
    profiles: dict[str, Any] = {}

    async def trigger_load(seconds: int, start: Any) -> dict[str, Any]:
        c = TRIGGER_CONCURRENCY
        requests = [bench.trigger_request(f"tg-prof-{i:06d}") for i in range(30_000)]
        result = await run_load(requests, concurrency=c, total=30_000, duration=seconds + 0.5,
                                warmup=cell_warmup(c), shared=True,
                                on_measure_start=start)  # fmt: skip
        return result.summary()

    async with running_service(bench, "service-trigger-profile", WORKER_OFF):
        profiles["trigger"] = await _profiled(bench, "trigger", trigger_load)
    retire_pending(bench)

    async def delivery_round(seconds: int, start: Any) -> dict[str, Any]:
        # About as many deliveries as the default worker drains in the profile's duration.
        return await _delivery_round(bench, None, 0, max(200, int(seconds * 100)), start)

    async with running_service(bench, "service-deliveries-profile", _delivery_env(None)):
        profiles["deliveries"] = await _profiled(bench, "deliveries", delivery_round)
    bench.results["trigger_profile"] = profiles


