"""The targets a run is judged by, PASS/FAIL per target, the markdown of a run (the table for
``bench/RESULTS.md``) and the results files ``bench/out/results-<ts>.json`` and ``.md``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import authcost, outage, scaleout, soak
from bench.common import (
    CONCURRENCIES, DEFAULT_DELIVERY_CONCURRENCY, DISTURBED_OTHER_PCT, FRESH_CONCURRENCIES, FULL,
    HISTORY_MESSAGES, LATENCIES, QUICK, Budget, shown,
)  # fmt: skip

TARGET_ADDED_MS = 5.0
TARGET_RPS_0 = 400.0
TARGET_RPS_200 = 0.9 * 64 / 0.2  # 90 % of the ideal 320 req/s
TARGET_RSS_MB = 150.0
TARGET_RSS_GROWTH = 0.05
TARGET_STARTUP_S = 2.0
TARGET_HISTORY = 0.10
TARGET_FRESH_RATIO = 0.80  # first-contact req/s over returning-user req/s, c=64
TARGET_FRESH_ADDED_MS = 4.0
TARGET_TRIGGER_RATIO = 0.80  # trigger_bot req/s over a first incoming_message's, c=32 (issue 7)
TARGET_DELIVERIES_PER_S = 100.0  # end to end, first trigger to the last delivery sent (issue 7)


def _cell(results: dict[str, Any], target: str, latency: int, c: int) -> dict[str, Any]:
    """A matrix cell ("service", "floor") or a fresh scenario's ("fresh", "returning")."""
    cells = results.get("matrix", []) + results.get("fresh", {}).get("cells", [])
    for cell in cells:
        if cell["target"] == target and cell["llm_latency_ms"] == latency and cell["concurrency"] == c:
            return cell
    return {}


def _budget(results: dict[str, Any]) -> Budget:
    return FULL if results["mode"] == "full" else QUICK


def _cpu(cell: dict[str, Any]) -> str:
    cpu = cell["cpu_pct_of_one_core"]
    return (f"{cpu['service']:.0f} / {cpu['postgres']:.0f} / {cpu['fake_llm']:.0f} / "
            f"{cpu['loadgen']:.0f} / {cpu['other']:.0f}")  # fmt: skip


def _disturbed(*cells: dict[str, Any]) -> str:
    """" †" when other processes took more than DISTURBED_OTHER_PCT of a core in any cell."""
    other = max(cell["cpu_pct_of_one_core"]["other"] for cell in cells)
    return " †" if other > DISTURBED_OTHER_PCT else ""


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    targets = []

    def add(name: str, measured: str, ok: bool | None) -> None:
        targets.append({"target": name, "measured": measured,
                        "result": "n/a" if ok is None else ("PASS" if ok else "FAIL")})  # fmt: skip

    if results.get("matrix"):  # not in a run of the trigger scenarios only
        _matrix_targets(results, add)
    _other_targets(results, add)
    return targets


def _matrix_targets(results: dict[str, Any], add: Any) -> None:
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


def _other_targets(results: dict[str, Any], add: Any) -> None:
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
    f64, r64 = _cell(results, "fresh", 0, 64), _cell(results, "returning", 0, 64)
    if f64 and r64:
        ratio = results["fresh"]["ratio_rps_c64"]
        add(
            f"New participant on every request, LLM 0 ms, c=64: >= {100 * TARGET_FRESH_RATIO:g} % "
            "of the returning-user throughput measured in the same run (0 errors)",
            f"{f64['rps']} vs {r64['rps']} req/s ({100 * ratio:.1f} %), errors "
            f"{f64['errors']} / {r64['errors']}",
            ratio >= TARGET_FRESH_RATIO and f64["errors"] == 0 and r64["errors"] == 0,
        )
    f1 = _cell(results, "fresh", 0, 1)
    if f1:
        add(
            f"Concurrency 1 added p50 of a first message <= {TARGET_FRESH_ADDED_MS:g} ms "
            "(LLM 0 ms)",
            f"{f1['added_p50_ms']:.2f} ms ({f1['p50_ms']:.2f} ms − floor "
            f"{f1['floor_p50_ms']:.2f} ms)",
            f1["added_p50_ms"] <= TARGET_FRESH_ADDED_MS,
        )
    authcost.targets(results, add)
    for module in (scaleout, outage, soak):
        module.targets(results, add)
    tr = results.get("trigger")
    if tr:
        inc, trig = tr["cells"]
        add(
            f"trigger_bot (message_text, a new telegram participant per request), c="
            f"{tr['concurrency']}, delivery worker off: >= {100 * TARGET_TRIGGER_RATIO:g} % of a "
            "first incoming_message's req/s (new participant, LLM 0 ms), same worker, same run "
            "(0 errors)",
            f"{trig['rps']} vs {inc['rps']} req/s ({100 * tr['ratio_rps']:.1f} %), errors "
            f"{trig['errors']} / {inc['errors']}",
            tr["ratio_rps"] >= TARGET_TRIGGER_RATIO and trig["errors"] == 0 and inc["errors"] == 0,
        )
    dl = results.get("deliveries")
    for d in (dl or {}).get("settings", []):
        add(
            f"Deliveries end to end (trigger_bot → worker in process → fake Telegram answering "
            f"in {dl['fake_latency_ms']} ms), CHATBOTS_DELIVERY_CONCURRENCY={d['setting_label']}: "
            f">= {TARGET_DELIVERIES_PER_S:g} deliveries/s, each sent exactly once",
            f"{d['deliveries_per_s']} deliveries/s ({d['deliveries']:,} in {d['e2e_s']:.2f} s, "
            f"drain after the last trigger {d['drain_s']:.2f} s); checks "
            + ("ok" if all(d["trials_ok"]) else "FAILED"),
            d["deliveries_per_s"] >= TARGET_DELIVERIES_PER_S and all(d["trials_ok"]),
        )


def _trials_line(results: dict[str, Any]) -> list[str]:
    """Every trial's req/s, when the matrix ran more than once (runs before trials: nothing)."""
    runs = []
    for latency in LATENCIES:
        for c in CONCURRENCIES:
            s, f = _cell(results, "service", latency, c), _cell(results, "floor", latency, c)
            if len(s.get("trials_rps", ())) > 1:
                runs.append(f"{latency} ms c={c}: service {' / '.join(map(str, s['trials_rps']))}, "
                            f"floor {' / '.join(map(str, f['trials_rps']))}")  # fmt: skip
    if not runs:
        return []
    return [
        f"Trials: the matrix ran {len(_cell(results, 'service', 0, 1)['trials_rps'])} times, all "
        "cells each time; each row shows the trial with the median service req/s (its service "
        "and floor). req/s of every trial, in order: " + "; ".join(runs) + ".",
        "",
    ]


def _fresh_section(results: dict[str, Any]) -> list[str]:
    """The fresh scenario's table: first contacts and the same users returning (runs before the
    scenario existed: nothing)."""
    fresh = results.get("fresh")
    if not fresh:
        return []
    out = [
        "### First contact: a new user (participant and session) on every request, LLM 0 ms",
        "",
        "| messages | conc. | req/s | p50 / p95 / p99 ms | floor p50 ms | added p50 ms | errors "
        "| svc CPU ms/req | CPU % svc / pg / llm / gen / other | PostgreSQL conns opened "
        "| requests (warm-up + measured) | req/s of every trial |",
        "|---|---:|---:|---|---:|---:|---:|---:|---|---:|---|---|",
    ]
    for c in FRESH_CONCURRENCIES:
        for kind in ("fresh", "returning"):
            s = _cell(results, kind, 0, c)
            out.append(
                f"| {'first (new user)' if kind == 'fresh' else 'second (returning)'} | "
                f"{c}{_disturbed(s)} | {s['rps']:.1f} | "
                f"{s['p50_ms']:.2f} / {s['p95_ms']:.2f} / {s['p99_ms']:.2f} | "
                f"{s['floor_p50_ms']:.2f} | {s['added_p50_ms']:+.2f} | {s['errors']} | "
                f"{s.get('service_cpu_ms_per_request', '-')} | {_cpu(s)} | "
                f"{s.get('pg_connections_opened', '-')} | "
                f"{s['warmup_requests']} + {s['requests']} | "
                f"{' / '.join(map(str, s.get('trials_rps', ())))} |"
            )
    ratios = fresh["trials_ratio_rps"]
    b = _budget(results)
    seed = results.get("new_users_seed", {})
    out += [
        "",
        f"Fresh / returning req/s: c=64 **{fresh['ratio_rps_c64']:.3f}**, c=1 "
        f"{fresh['ratio_rps_c1']:.3f} (trial {fresh['median_trial']}, the median by the c=64 "
        f"ratio; every trial's c=64 ratio: {' / '.join(map(str, ratios['64']))}; c=1: "
        f"{' / '.join(map(str, ratios['1']))}).",
        "",
        "At the end of each matrix trial, on the same worker: at each concurrency, first "
        "messages of users never seen before (each request a new user with its own write key: "
        "the service makes its participant and session), then at once the same users' second "
        "messages in the same order (their session exists), so the pair is measured back to "
        "back. Each request is sent once, drawn by whichever client is free (`run_load(shared="
        f"True)`). Each cell: warm-up 2×concurrency+5 requests, then up to {b.fresh_requests} "
        f"requests or {b.cell_seconds:g} s; the returning cell replays exactly the users the "
        "first one reached. Floor = the fake LLM alone at LLM 0 ms and the same concurrency, "
        "same trial; added p50 = p50 − floor p50. "
        f"{seed.get('users', '?')} new users seeded in advance ({seed.get('seconds', '?')} s, "
        "batched INSERTs: `bench/seed.py --bulk`)." + _fresh_check_line(fresh.get("check")),
        "",
    ]  # fmt: skip
    return out


def _trigger_section(results: dict[str, Any]) -> list[str]:
    """trigger_bot next to a first incoming_message (runs without the scenario: nothing)."""
    tr = results.get("trigger")
    if not tr:
        return []
    c = tr["concurrency"]
    out = [
        f"### trigger_bot vs a first incoming_message: a new participant on every request, c={c}, "
        "LLM 0 ms, delivery worker off",
        "",
        "| request | conc. | req/s | p50 / p95 / p99 ms | errors | peak RSS MB | svc CPU ms/req "
        "| CPU % svc / pg / llm / gen / other | PostgreSQL conns opened "
        "| requests (warm-up + measured) | req/s of every trial |",
        "|---|---:|---:|---|---:|---:|---:|---|---:|---|---|",
    ]
    names = {"incoming": "incoming_message, new user (participant + session)",
             "trigger": "trigger_bot, message_text, new telegram participant"}  # fmt: skip
    for s in tr["cells"]:
        out.append(
            f"| {names[s['target']]} | {c}{_disturbed(s)} | {s['rps']:.1f} | "
            f"{s['p50_ms']:.2f} / {s['p95_ms']:.2f} / {s['p99_ms']:.2f} | {s['errors']} | "
            f"{s.get('rss_peak_mb', '-')} | {s.get('service_cpu_ms_per_request', '-')} | "
            f"{_cpu(s)} | {s.get('pg_connections_opened', '-')} | "
            f"{s['warmup_requests']} + {s['requests']} | "
            f"{' / '.join(map(str, s.get('trials_rps', ())))} |"
        )
    inc, trig = tr["cells"]
    cpu_ratio = ""
    if inc.get("service_cpu_ms_per_request") and trig.get("service_cpu_ms_per_request"):
        cpu_ratio = (f"; service CPU per request trigger/incoming "
                     f"{trig['service_cpu_ms_per_request'] / inc['service_cpu_ms_per_request']:.2f}")  # fmt: skip
    orders = ", ".join(f"{i + 1}: {' then '.join(o)}" for i, o in enumerate(tr["trials_order"]))
    b = _budget(results)
    out += [
        "",
        f"trigger / incoming req/s: **{tr['ratio_rps']:.3f}** (trial {tr['median_trial']}, the "
        f"median by the ratio; every trial's ratio: {' / '.join(map(str, tr['trials_ratio_rps']))}"
        f"){cpu_ratio}.",
        "",
        "One service worker (`chatbots serve --workers 1`) with CHATBOTS_WORKER_IN_PROCESS=false "
        "(the delivery worker off: only the HTTP side is measured), the default database pools. "
        "Each trial measures both cells back to back on that worker, in alternating order "
        f"({orders}). incoming_message: each request a user never seen before, with its own "
        "write key (a new participant and session, the question and the fake LLM's answer "
        "stored); trigger_bot: one admin's write key, `message_text` to a new telegram "
        "identifier each time (a new participant, its data row, a session and a pending "
        "delivery in one transaction, plus a NOTIFY). Each request is sent once, drawn by "
        f"whichever client is free. Each cell: warm-up 2×concurrency+5 requests, then up to "
        f"{b.trigger_requests} requests or {b.cell_seconds:g} s. The deliveries made stay pending "
        "and are set aside (`skipped`) before the next scenario." + _trigger_check_line(tr.get("check")),
        "",
    ]  # fmt: skip
    return out


def _trigger_check_line(check: dict[str, Any] | None) -> str:
    if not check:
        return ""
    return (f" Database check: {check['triggers']} triggers → {check['trigger_participants']} "
            f"telegram participants, {check['trigger_sessions']} sessions, "
            f"{check['trigger_deliveries']} deliveries ({check['trigger_pending']} pending), "
            f"{check['trigger_messages']} messages; {check['incoming']} first messages → "
            f"{check['incoming_participants']} participants, {check['incoming_sessions']} "
            f"sessions, {check['incoming_messages']} messages ("
            + ("as expected" if check["ok"] else "NOT as expected") + ").")  # fmt: skip


def _deliveries_section(results: dict[str, Any]) -> list[str]:
    dl = results.get("deliveries")
    if not dl:
        return []
    out = [
        f"### Deliveries end to end: trigger_bot → the delivery worker (in process) → fake "
        f"Telegram sendMessage ({dl['fake_latency_ms']} ms)",
        "",
        "| CHATBOTS_DELIVERY_CONCURRENCY | deliveries | first trigger → all sent, s "
        "| deliveries/s | triggers: s / req/s / p50 / p99 ms | sent by the last trigger "
        "| drain after the last trigger: s (sends/s) | row created → sent p50 / p99 s "
        "| svc CPU ms/delivery "
        "| CPU % svc / pg / tg / gen / other | peak RSS MB | checks | deliveries/s of every "
        "trial | drain s of every trial |",
        "|---|---:|---:|---:|---|---:|---|---|---:|---|---:|---|---|---|",
    ]
    for d in dl["settings"]:
        cpu = d["cpu_pct_of_one_core"]
        cpu_text = (f"{cpu['service']:.0f} / {cpu['postgres']:.0f} / {cpu['fake_llm']:.0f} / "
                    f"{cpu['loadgen']:.0f} / {cpu['other']:.0f}")  # fmt: skip
        out.append(
            f"| {d['setting_label']}{_disturbed(d)} | {d['deliveries']:,} | {d['e2e_s']:.2f} | "
            f"**{d['deliveries_per_s']:.1f}** | {d['trigger_phase_s']:.2f} / {d['trigger_rps']:.0f}"
            f" / {d['trigger_p50_ms']:.1f} / {d['trigger_p99_ms']:.1f} | "
            f"{d['sent_during_triggers']:,} | {d['drain_s']:.2f} ({d['drain_sends_per_s']}) | "
            f"{_num(d['db'].get('created_to_sent_p50_s'))} / "
            f"{_num(d['db'].get('created_to_sent_p99_s'))} | {d['service_cpu_ms_per_delivery']} | {cpu_text} | {d['rss_peak_mb']} | "
            + ("ok" if all(d["trials_ok"]) else "**FAILED**") + " | "
            f"{' / '.join(map(str, d['trials_deliveries_per_s']))} | "
            f"{' / '.join(f'{x:.2f}' for x in d['trials_drain_s'])} |"
        )
    out += [""]
    for d in dl["settings"]:
        out.append(f"Sends per second (fake Telegram answers, second by second from the first "
                   f"trigger), concurrency {d['setting_label']}, trial {d['trial']}: "
                   f"{', '.join(map(str, d['sends_by_second']))}.")  # fmt: skip
        out.append("")
    first = dl["settings"][0]
    out += [
        f"Each round: a service of its own (`chatbots serve --workers 1`, "
        "CHATBOTS_WORKER_IN_PROCESS=true, CHATBOTS_TELEGRAM_API_BASE = the fake; "
        f"CHATBOTS_DELIVERY_CONCURRENCY not set, i.e. {DEFAULT_DELIVERY_CONCURRENCY}, or the "
        "value shown), a warm-up of 69 triggers delivered and forgotten, then "
        f"{dl['count']:,} trigger_bot requests (`message_text`, a new telegram participant "
        f"each) sent by {dl['trigger_concurrency']} clients as fast as they are answered; the "
        "clock runs from the first trigger until the database shows all of them `sent` (the "
        "fake is polled every 50 ms, the database every 20 ms once the fake has answered "
        "all). The rows show each setting's median round by deliveries/s; settings alternate "
        "round by round. Checks, every round: each delivery row `sent` after one attempt, with "
        "its own message and provider message id, no trigger error; the fake got each chat's "
        "message exactly once (none missing, none unexpected). svc CPU ms/delivery = the "
        "worker's CPU over the round (triggers and sends) per delivery; tg = the fake "
        "Telegram. Median round, default setting, in the database: first delivery row created "
        f"→ last sent_at {first['db']['db_span_s']:.2f} s; rows {first['statuses']}; fake: "
        f"{first['fake']['received']} requests, {first['fake']['exactly_once']} chats exactly "
        f"once, {first['fake']['duplicates']} duplicates, {first['fake']['missing']} missing.",
        "",
        *_delivery_trace_line(results),
    ]  # fmt: skip
    return out


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _delivery_trace_line(results: dict[str, Any]) -> list[str]:
    tr = results.get("delivery_sql_trace")
    if not tr:
        return []
    t = tr["deliveries"][-1]
    trig, work = t["trigger"], t["worker"]
    return [
        f"SQL per delivery (PostgreSQL statement log of one trigger and its delivery on an idle "
        f"service, worker on, after a warm-up): the trigger request {trig['round_trips']} round "
        f"trips in {trig['transactions']} transactions ({trig['server_ms']:.2f} ms server time, "
        f"{t['trigger_ms']} ms wall); the worker {work['round_trips']} round trips in "
        f"{work['transactions']} transactions ({work['server_ms']:.2f} ms server time), of "
        f"which {t.get('worker_claims', '?')} claims (a claim is BEGIN, UPDATE … WHERE id IN "
        "(SELECT … FOR UPDATE SKIP LOCKED), COMMIT; one takes the delivery, any other finds "
        "nothing); "
        f"{t['other']['round_trips']} other; trigger sent → fake Telegram answered "
        f"{t['trigger_to_fake_answer_ms']} ms (of which {tr['fake_latency_ms']} ms the fake's "
        f"latency). Statements in `{tr['file']}`.",
        "",
    ]


def _watch_label(label: str, profile: str) -> str:
    """pyspy_summary's names are the turn's: in a deliveries profile httpx is the sender's."""
    if profile == "deliveries" and label.startswith("LLM call (httpx"):
        return "outgoing HTTP (httpx/httpcore: the Telegram sendMessage)"
    return label


def _trigger_profile_section(results: dict[str, Any]) -> list[str]:
    profiles = results.get("trigger_profile") or {}
    out: list[str] = []
    titles = {"trigger": "trigger_bot only (worker off), c=32",
              "deliveries": "a deliveries round (worker on, default concurrency)"}  # fmt: skip
    for name, prof in profiles.items():
        if not prof:
            continue
        p, load = prof["summary"], prof["load_under_profiler"]
        rate = (f"{load['rps']} req/s" if "rps" in load
                else f"{load['deliveries_per_s']} deliveries/s")  # fmt: skip
        top = ", ".join(f"{k} {pct}%" for k, _, pct in p["self_by_package"][:8])
        out += [
            f"### Where the worker's CPU goes: {titles.get(name, name)} (py-spy --gil, "
            f"{p['samples']} samples over {prof['seconds']} s, {rate} under the profiler)",
            "",
            f"Self time by package (leaf frame): {top}.",
            "",
            "Named costs (inclusive): " + "; ".join(
                f"{_watch_label(label, name)} {pct}%" for label, _, pct in p["watch"] if pct > 0)
            + ".",
            "",
            "App functions (inclusive): " + "; ".join(
                f"{k} {pct}%" for k, _, pct in [a for a in p["app_inclusive"]
                                                if a[0].split(" (")[0] not in ("main", "serve")][:12]
            ) + ".",
            "",
            "Hottest leaf functions: " + "; ".join(
                f"{k} {pct}%" for k, _, pct in p["self_by_function"][:10]) + ".",
            "",
            "PostgreSQL client backends not idle (average per 50 ms sample): " + "; ".join(
                f"{k} {v}" for k, v in prof["pg_waits"]["per_sample"].items()) + ".",
            "",
            f"Full summary: `{prof['summary_path']}`.",
            "",
        ]  # fmt: skip
    return out


def _fresh_check_line(check: dict[str, Any] | None) -> str:
    if not check:
        return ""
    verdict = "as expected" if check["ok"] else "NOT one participant, one session, 4 messages each"
    return (f" Database check after the run: {check['users']} users reached → "
            f"{check['participants']} participants, {check['sessions']} sessions, "
            f"{check['messages']} messages ({verdict}).")  # fmt: skip


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
    ]
    if results.get("matrix"):
        out += _matrix_section(results)
    out += [
        *_fresh_section(results),
        *_trigger_section(results),
        *_deliveries_section(results),
        *authcost.section(results),
        *scaleout.section(results),
        *outage.section(results),
        *soak.section(results),
        *([f"### trigger_bot scenarios: not measured ({results['trigger_skipped']})", ""]
          if results.get("trigger_skipped") else []),
        "### Targets",
        "",
        "| target | measured | result |",
        "|---|---|---|",
    ]
    out += [f"| {t['target']} | {t['measured']} | **{t['result']}** |" for t in results["targets"]]
    out += _details(results)
    if out[-1] != "":
        out.append("")
    out += _trigger_profile_section(results)
    return "\n".join(out) + "\n"


def _matrix_section(results: dict[str, Any]) -> list[str]:
    out = [
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
            out.append(
                f"| {latency} ms | {c}{_disturbed(s, f)} | {s['rps']:.1f} | {f['rps']:.1f} | "
                f"{s['rps'] / f['rps']:.3f} | {s['p50_ms']:.2f} / {s['p95_ms']:.2f} / {s['p99_ms']:.2f} | "
                f"{f['p50_ms']:.2f} / {f['p95_ms']:.2f} / {f['p99_ms']:.2f} | "
                f"{s['p50_ms'] - f['p50_ms']:+.2f} | {s['errors']} / {f['errors']} | "
                f"{s.get('rss_peak_mb', '-')} | {s.get('service_cpu_ms_per_request', '-')} | "
                f"{_cpu(s)} | "
                f"{s.get('llm_connections_opened', '-')} / {s.get('pg_connections_opened', '-')} / "
                f"{s['requests'] + s['warmup_requests']} |"
            )
    out += [
        "",
        f"Each cell: warm-up 2×concurrency+5 requests, then up to {_budget(results).cell_requests} "
        f"requests or {_budget(results).cell_seconds:g} s, whichever first. 'added p50' = "
        "service p50 − floor p50. CPU % is of one core (the machine has "
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
        *_trials_line(results),
    ]
    return out


def _details(results: dict[str, Any]) -> list[str]:
    """The paragraphs under the targets: RSS run, history, SQL trace, db micro, profile."""
    out: list[str] = []
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
            "`bench/out/run-<ts>/sql-trace.txt`)"
            + (f"; not counted: {t['worker_poll_round_trips']} round trip(s) of the idle "
               "in-process delivery worker's poll that fell in the window"
               if t.get("worker_poll_round_trips") else "")
            + ".",
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
    if out:
        out.append("")
    return out


def write_results(results: dict[str, Any], out_dir: Path, ts: str) -> None:
    """Write the JSON and the markdown of a finished run and print the markdown."""
    json_path = out_dir / f"results-{ts}.json"
    json_path.write_text(json.dumps(results, indent=2, default=str))
    markdown = render_markdown(results)
    md_path = out_dir / f"results-{ts}.md"
    md_path.write_text(markdown)
    print("\n" + markdown)
    print(f"\nwrote {shown(json_path)} and {shown(md_path)} "
          f"({results['duration_s']} s)")  # fmt: skip
