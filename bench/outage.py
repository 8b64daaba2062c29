"""The outage scenario (issue 9): PostgreSQL crashes under load and is started again.

Target: "503 with Retry-After during the outage, 200s again within 5 s of its return without a
restart, no committed message lost, and the delivery worker resumes by itself."

One service of its own (``chatbots serve --workers 1``, the delivery worker in process, its
Telegram sender pointed at a fake Telegram of its own that answers after 250 ms, so that a batch
of deliveries is still pending at the crash). Load at concurrency 16 on the latency-0 chatbot
by the load users, every request with a text of its own (its label). The timeline (seconds
from the measured load's start; ``--quick`` halves it):

- 0-10 load; at 7 a batch of trigger_bot deliveries (``message_text``, new telegram ids);
- 10 the crash (``bench/pgcrash.py``: SIGKILL of the postmaster and its backends), with
  commits made durable first (the bench's cluster runs with ``synchronous_commit=off``,
  which by design loses the last commits in a crash: not what production runs);
- 20 ``pg_ctl start`` on the same PGDATA (crash recovery); "back" is the first moment a new
  connection is accepted (polled every 25 ms);
- 20-35 load. A probe client sends its own incoming_message every 100 ms throughout and keeps
  the headers (the load generator does not): every 503 must carry ``Retry-After``.

Then, bounded: every delivery of the batch ``sent`` (claims cut off by the crash come back
after their lease: ``CHATBOTS_DELIVERY_LEASE_SECONDS=10`` here, 60 by default), and the checks:
requests sent during the outage all 503, none 500 or a connection error anywhere, the service
pid unchanged, every text answered 200 (load and probe) in the database as a human message
followed by an AI message, resends the fake saw.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx

from bench import pgcrash
from bench.common import FRESH_USER, HOST, N_LOAD_USERS, PY, TELEGRAM_BOT_TOKEN, log
from bench.harness import Bench
from bench.loadgen import Request, run_load
from bench.processes import wait_listening
from bench.trigger import dsn, running_service

CONCURRENCY = 16
RECOVERY_TARGET_S = 5.0
FAKE_TELEGRAM_LATENCY_MS = 250
LEASE_S = 10
PROBE_EVERY_S = 0.1
PROBE_USER = FRESH_USER  # a seeded user the load (users 0..63) never uses
RETRY_AFTER = "5"


def _plan(quick: bool) -> dict[str, float]:
    scale = 0.5 if quick else 1.0
    return {"before_s": 10 * scale, "outage_s": 10 * scale, "after_s": 15 * scale,
            "deliveries": 100 if quick else 200}  # fmt: skip


async def outage(bench: Bench) -> None:
    if bench.service is not None:  # its worker would take this scenario's deliveries
        bench.stop_proc(bench.service)
        bench.service, bench.service_port = None, 0
    plan = _plan(bench.args.quick)
    original = pgcrash.server_options(bench.pg)
    pgcrash.restart(bench.pg, pgcrash.durable(original))
    fake = bench.spawn("fake_telegram-outage", [
        PY, "-m",
        "bench.fake_telegram", "--port", "0", "--latency-ms", str(FAKE_TELEGRAM_LATENCY_MS),
        "--token", TELEGRAM_BOT_TOKEN,
    ])  # fmt: skip
    try:
        fake_base = f"http://{HOST}:{wait_listening(fake)}"
        env = {"CHATBOTS_WORKER_IN_PROCESS": "true", "CHATBOTS_TELEGRAM_API_BASE": fake_base,
               "CHATBOTS_DELIVERY_LEASE_SECONDS": str(LEASE_S)}  # fmt: skip
        async with running_service(bench, "service-outage", env):
            result = await _run(bench, plan, fake_base)
        bench.results["outage"] = result
    finally:
        bench.stop_proc(fake)
        if bench.pg.postmaster_pid() is None or not _accepts(bench):
            pgcrash.start(bench.pg, original)
        else:
            pgcrash.restart(bench.pg, original)


def _accepts(bench: Bench) -> bool:
    try:
        bench.pg.psql("SELECT 1")
        return True
    except (RuntimeError, OSError):
        return False


async def _run(bench: Bench, plan: dict[str, float], fake_base: str) -> dict[str, Any]:
    import asyncpg

    pid = bench.service_pid()
    total_s = plan["before_s"] + plan["outage_s"] + plan["after_s"]
    requests = [bench.incoming_request(0, bench.keys[i % N_LOAD_USERS], f"outage load {i}", f"outage load {i}")
                for i in range(int(total_s * 3000))]  # more than any rate here sends  # fmt: skip
    marks: dict[str, float] = {}
    probes: list[dict[str, Any]] = []
    stop_probe = asyncio.Event()

    def t() -> float:
        return time.perf_counter() - marks["t0"]

    async def drive() -> dict[str, Any]:
        while "t0" not in marks:
            await asyncio.sleep(0.01)
        await asyncio.sleep(max(0.0, plan["before_s"] - 3 - t()))
        triggers = [bench.trigger_request(f"outage-tg-{i:04d}") for i in range(int(plan["deliveries"]))]
        queued = await run_load(triggers, concurrency=8, total=len(triggers), duration=30, shared=True)
        await asyncio.sleep(max(0.0, plan["before_s"] - t()))
        at_kill = await asyncio.to_thread(_delivery_statuses, bench)
        marks["kill"] = t()
        killed = await asyncio.to_thread(pgcrash.kill, bench.pg)
        marks["killed"] = t()
        log(f"outage: PostgreSQL killed at {marks['kill']:.2f} s ({killed} processes)")
        await asyncio.sleep(max(0.0, marks["kill"] + plan["outage_s"] - t()))
        marks["start"] = t()
        starting = asyncio.create_task(asyncio.to_thread(pgcrash.start, bench.pg, pgcrash.durable(
            pgcrash.server_options(bench.pg))))  # fmt: skip
        while True:  # "back": the first new connection accepted
            try:
                conn = await asyncpg.connect(dsn(bench), timeout=1)
                await conn.close()
                break
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                await asyncio.sleep(0.025)
        marks["back"] = t()
        await starting
        log(f"outage: PostgreSQL accepts connections again at {marks['back']:.2f} s")
        return {"triggers": queued.summary()["status_counts"], "at_kill": at_kill}

    async def probe() -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            n = 0
            while not stop_probe.is_set():
                text = f"outage probe {n}"
                sent = t() if "t0" in marks else None
                try:
                    r = await http.post(
                        f"http://{HOST}:{bench.service_port}/channels/api/{bench.chatbots[0]}/incoming_message",
                        json={"message": text}, headers={"X-api-key": bench.keys[PROBE_USER]})  # fmt: skip
                    status, retry = r.status_code, r.headers.get("retry-after")
                    detail = r.json().get("detail") if r.status_code != 200 else None
                except httpx.HTTPError as exc:
                    status, retry, detail = "conn_error", None, type(exc).__name__
                probes.append({"t": sent, "status": status, "retry_after": retry, "detail": detail,
                               "text": text})  # fmt: skip
                n += 1
                await asyncio.sleep(PROBE_EVERY_S)

    prober = asyncio.create_task(probe())
    driver = asyncio.create_task(drive())
    try:
        load = await run_load(requests, concurrency=CONCURRENCY, total=len(requests),
                              duration=total_s, warmup=2 * CONCURRENCY, shared=True, record=True,
                              on_measure_start=lambda: marks.setdefault("t0", time.perf_counter()))  # fmt: skip
        drove = await driver
    finally:
        stop_probe.set()
        await prober
        driver.cancel()
    pid_after = bench.service_pid() if bench.service and bench.service.alive() else None
    deliveries = await _drain(bench, int(plan["deliveries"]), fake_base, marks)
    ok_texts = [e[3] for e in load.events if e[2] == 200] + [p["text"] for p in probes if p["status"] == 200]
    missing = await _missing_messages(bench, ok_texts)
    return _summarise(plan, marks, load, probes, drove, deliveries, missing, len(ok_texts), pid, pid_after)


def _delivery_statuses(bench: Bench) -> dict[str, int]:
    out = bench.pg.psql("SELECT status, count(*) FROM delivery WHERE recipient LIKE 'outage-tg-%'"
                        " GROUP BY status ORDER BY status")  # fmt: skip
    return {s: int(n) for s, n in (line.split("|") for line in out.splitlines() if line)}


async def _drain(bench: Bench, n: int, fake_base: str, marks: dict[str, float]) -> dict[str, Any]:
    """Waits (bounded: lease + 30 s) until the batch is sent; what the database and the fake saw."""
    deadline = time.perf_counter() + LEASE_S + 30
    statuses = _delivery_statuses(bench)
    while statuses.get("sent", 0) < n and time.perf_counter() < deadline:
        await asyncio.sleep(0.5)
        statuses = _delivery_statuses(bench)
    async with httpx.AsyncClient(timeout=10) as http:
        fake = (await http.get(f"{fake_base}/_stats?chats=1")).json()
    per_chat = {k: v for k, v in fake["per_chat"].items() if k.startswith("outage-tg-")}
    wall = {k: time.time() - (time.perf_counter() - marks["t0"] - marks[k]) for k in ("kill", "back")}
    before, after = bench.pg.psql(
        "SELECT count(*) FILTER (WHERE sent_at < to_timestamp({kill})),"
        " count(*) FILTER (WHERE sent_at >= to_timestamp({back}))"
        " FROM delivery WHERE recipient LIKE 'outage-tg-%'".format(**wall)).split("|")  # fmt: skip
    wall_back = wall["back"]
    return {"queued": n, "statuses": statuses, "chats_reached": len(per_chat),
            "resends": sum(v - 1 for v in per_chat.values()), "sent_before_kill": int(before),
            "sent_after_back": int(after),
            "answered_after_back": sum(1 for a in fake["answered_at"] if a >= wall_back)}  # fmt: skip


async def _missing_messages(bench: Bench, texts: list[str]) -> list[str]:
    """The texts answered 200 that lack their human message followed by an AI message."""
    import asyncpg

    conn = await asyncpg.connect(dsn(bench))
    try:
        rows = await conn.fetch(
            "WITH m AS (SELECT content, role, lead(role) OVER (PARTITION BY session_id"
            "  ORDER BY created_at, id) AS next_role FROM chat_message"
            "  WHERE content LIKE 'outage %' OR role <> 'human')"
            " SELECT t FROM unnest($1::text[]) AS t WHERE NOT EXISTS (SELECT 1 FROM m"
            "  WHERE m.content = t AND m.role = 'human' AND m.next_role = 'ai')", texts,
        )  # fmt: skip
    finally:
        await conn.close()
    return [r[0] for r in rows]


def _summarise(plan: dict[str, float], marks: dict[str, float], load: Any, probes: list[dict[str, Any]],
               drove: dict[str, Any], deliveries: dict[str, Any], missing: list[str], ok_count: int,
               pid: int, pid_after: int | None) -> dict[str, Any]:  # fmt: skip
    kill, back = marks["kill"], marks["back"]
    done = [(sent + latency, sent, status) for sent, latency, status, _ in load.events]
    during = Counter(str(s) for end, sent, s in done if sent >= marks["killed"] and end <= back)
    in_flight = Counter(str(s) for end, sent, s in done if sent < marks["killed"] <= end)
    bad = Counter(str(s) for _, _, s in done if s not in (200, 503))
    after = [(end, s) for end, sent, s in done if end > back]
    first_200 = min((end for end, s in after if s == 200), default=None)
    last_bad = max((end for end, s in after if s != 200), default=back)
    probe_503 = [p for p in probes if p["status"] == 503]
    seconds = int(max((end for end, _, _ in done), default=0)) + 1
    timeline = [[0, 0, 0] for _ in range(seconds)]
    for end, _, s in done:
        timeline[int(end)][0 if s == 200 else 1 if s == 503 else 2] += 1
    out = {
        "plan": plan, "concurrency": CONCURRENCY, "crash": "SIGKILL of the postmaster and its backends",
        "kill_s": round(kill, 3), "back_s": round(back, 3), "restart_issued_s": round(marks["start"], 3),
        "outage_s": round(back - kill, 3),
        "requests": load.completed, "status_counts": {str(k): v for k, v in load.status_counts.items()},
        "sent_during_outage": dict(during), "in_flight_at_kill": dict(in_flight), "not_200_or_503": dict(bad),
        "first_200_after_back_s": round(max(0.0, first_200 - back), 3) if first_200 is not None else None,
        "all_200_after_back_s": round(max(0.0, last_bad - back), 3),
        "probe": {"requests": len(probes), "status_counts": dict(Counter(str(p["status"]) for p in probes)),
                  "503_with_retry_after": sum(1 for p in probe_503 if p["retry_after"] == RETRY_AFTER),
                  "503": len(probe_503), "503_details": sorted({str(p["detail"]) for p in probe_503})},
        "service_pid": pid, "service_pid_after": pid_after,
        "answered_200": ok_count, "missing_messages": len(missing), "missing_sample": missing[:5],
        "deliveries": deliveries | {"at_kill": drove["at_kill"], "trigger_statuses": drove["triggers"]},
        "timeline": timeline,
    }  # fmt: skip
    log(f"outage: {out['status_counts']} | sent during the outage {dict(during)} | in flight at the kill "
        f"{dict(in_flight)} | first 200 {out['first_200_after_back_s']} s, all 200 "
        f"{out['all_200_after_back_s']} s after the return | probe {out['probe']['status_counts']} "
        f"({out['probe']['503_with_retry_after']}/{len(probe_503)} 503s with Retry-After) | pid "
        f"{pid} -> {pid_after} | {ok_count} answered 200, {len(missing)} missing | deliveries "
        f"{out['deliveries']}")  # fmt: skip
    return out


def _checks(o: dict[str, Any]) -> list[tuple[str, str, bool]]:
    d, p = o["deliveries"], o["probe"]
    during = o["sent_during_outage"]
    all_200 = o["all_200_after_back_s"]
    return [
        ("Outage: every request sent while PostgreSQL is down answers 503 (no 500, no connection error)",
         f"{during} ({o['outage_s']} s down)", bool(during) and set(during) == {"503"}),
        ("Outage: no response other than 200 or 503 at any time (in flight at the kill: "
         f"{o['in_flight_at_kill']})", str(o["not_200_or_503"] or "none"), not o["not_200_or_503"]),
        ("Outage: 503s carry Retry-After (probe client)", f"{p['503_with_retry_after']} of {p['503']}",
         p["503"] > 0 and p["503_with_retry_after"] == p["503"]),
        (f"Outage: 200s again within {RECOVERY_TARGET_S:g} s of PostgreSQL's return, without a restart",
         f"first 200 after {o['first_200_after_back_s']} s, only 200s after {all_200} s; pid "
         f"{o['service_pid']} -> {o['service_pid_after']}",
         o["first_200_after_back_s"] is not None and all_200 <= RECOVERY_TARGET_S
         and o["service_pid"] == o["service_pid_after"]),
        ("Outage: no committed message lost (each 200's human and AI message in the database)",
         f"{o['missing_messages']} missing of {o['answered_200']}", o["missing_messages"] == 0),
        ("Outage: the delivery worker resumes by itself (the batch all sent after the return)",
         f"{d['statuses']} of {d['queued']}: {d['sent_before_kill']} before the kill, {d['sent_after_back']} "
         f"after the return (at the kill {d['at_kill']}; {d['answered_after_back']} answers of the fake after "
         f"the return), {d['resends']} resent",
         d["statuses"].get("sent", 0) == d["queued"] == d["chats_reached"]
         == d["sent_before_kill"] + d["sent_after_back"]),
    ]  # fmt: skip


def targets(results: dict[str, Any], add: Any) -> None:
    o = results.get("outage")
    if not o:
        return
    for name, measured, ok in _checks(o):
        add(name, measured, ok)


def section(results: dict[str, Any]) -> list[str]:
    o = results.get("outage")
    if not o:
        return []
    plan = o["plan"]
    out = [
        "### PostgreSQL killed during load (outage)",
        "",
        f"Load at concurrency {o['concurrency']} (LLM 0 ms, a text of its own per request) on one "
        f"`chatbots serve --workers 1` with its delivery worker; {int(plan['deliveries'])} trigger_bot "
        f"deliveries queued 3 s before the crash ({o['crash']}) at {o['kill_s']} s; `pg_ctl start` at "
        f"{o['restart_issued_s']} s, accepting connections at {o['back_s']} s ({o['outage_s']} s down). "
        f"Status counts: {o['status_counts']}; probe: {o['probe']['status_counts']}.",
        "",
        "| check | measured | |",
        "|---|---|---|",
        *(f"| {name} | {measured} | {'PASS' if ok else 'FAIL'} |" for name, measured, ok in _checks(o)),
        "",
        "| second | 200 | 503 | other | |",
        "|---:|---:|---:|---:|---|",
    ]
    for second, (ok, unavailable, other) in enumerate(o["timeline"]):
        note = ("PostgreSQL killed" if int(o["kill_s"]) == second else
                "PostgreSQL back" if int(o["back_s"]) == second else "")  # fmt: skip
        out.append(f"| {second} | {ok} | {unavailable} | {other} | {note} |")
    return [*out, ""]
