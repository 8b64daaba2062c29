"""What authenticating costs a request (issue 8: "resolving an API key or an OAuth token adds
≤ 1 ms p50"): an API key, and an OAuth access token (a client-credentials token of the bench team).

The probe is ``GET /api/deliveries/not-a-delivery`` on one service worker: the route
authenticates (and checks the role) and then answers 404 without touching the database, so a
request with a credential differs from one without (401 at once, the same error handler) by
the credential's resolution alone. Sequential requests (concurrency 1) on one keep-alive
connection, the variants in alternating order round after round (this VM drifts over minutes);
the figure is each variant's p50 minus the p50 of the no-credential requests to the same service
in the same rounds. Two services run side by side: the default (lookups remembered for
CHATBOTS_AUTH_CACHE_SECONDS) and one with CHATBOTS_AUTH_CACHE_SECONDS=0 (a database lookup on
every request: the cost of a first request, or of every request without the cache).
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
import urllib.parse
import urllib.request
from typing import Any

from bench.common import ADMIN_EMAIL, HOST, TEAM, log
from bench.harness import Bench
from bench.loadgen import Client, Request, percentile

PROBE = "/api/deliveries/not-a-delivery"
TARGET_ADDED_P50_MS = 1.0
# Rate limits off on these two services: the no-credential requests are failed authentications
# (counted, then refused with 429 past 100 per address), and the figure is resolution alone.
LIMITS_OFF = {"CHATBOTS_RATE_LIMIT_ENABLED": "false"}
NO_CACHE = {"CHATBOTS_AUTH_CACHE_SECONDS": "0"}


def _machine_token(bench: Bench, port: int) -> str:
    """A client-credentials access token (``chatbots:interact``) of a new confidential client
    on the latency-0 chatbot. On the probe it resolves, then the route's role check answers
    403 (a machine token may not read the team's deliveries): the resolution is all it costs."""
    client = bench.cli("oauth-client", "create", "--team", TEAM, "--name", f"bench machine {port}",
                       "--client-credentials", "--chatbot", bench.chatbots[0], "--json")  # fmt: skip
    form = urllib.parse.urlencode({"grant_type": "client_credentials", "scope": "chatbots:interact"}).encode()
    request = urllib.request.Request(f"http://{HOST}:{port}/o/token/", data=form, method="POST")
    secret = base64.b64encode(f"{client['client_id']}:{client['client_secret']}".encode()).decode()
    request.add_header("Authorization", f"Basic {secret}")
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 (127.0.0.1 only)
        return json.loads(answer.read())["access_token"]


def _admin_key(bench: Bench) -> str:
    if not bench.admin_key:  # the trigger set-up makes one; a --only auth run makes its own
        bench.cli("user", "create", "--email", ADMIN_EMAIL, "--team", TEAM, "--role", "admin", "--json")
        bench.admin_key = bench.cli("apikey", "create", "--email", ADMIN_EMAIL, "--team", TEAM,
                                    "--name", "bench admin", "--write", "--json")["key"]  # fmt: skip
    return bench.admin_key


async def _timed(client: Client, request: Request, n: int, expect: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        status, body = await client.call(request)
        out.append((time.perf_counter() - t0) * 1000)
        if status != expect:
            raise RuntimeError(f"{PROBE}: expected {expect}, got {status} {body[:200]!r}")
    return out


async def auth_cost(bench: Bench) -> None:
    key = _admin_key(bench)
    rounds, per_round = (3, 200) if bench.args.quick else (6, 500)
    with contextlib.ExitStack() as stack:
        ports = {}
        for name, env in (("default", LIMITS_OFF), ("no-cache", LIMITS_OFF | NO_CACHE)):
            proc, port, _ = bench.start_service(f"service-auth-{name}", env)
            stack.callback(bench.stop_proc, proc)
            ports[name] = port
        token = {"Authorization": f"Bearer {_machine_token(bench, ports['default'])}"}
        variants = [
            ("default", "no credential", {}, 401),
            ("default", "API key (X-api-key), remembered", {"X-api-key": key}, 404),
            ("default", "OAuth access token (Bearer), remembered", token, 403),
            ("no-cache", "no credential", {}, 401),
            ("no-cache", "API key (X-api-key), looked up every time", {"X-api-key": key}, 404),
            ("no-cache", "OAuth access token (Bearer), looked up every time", token, 403),
        ]
        clients: list[tuple[Client, Request]] = []
        samples: list[list[float]] = [[] for _ in variants]
        for service, _, headers, _ in variants:
            request = Request.build("GET", f"http://{HOST}:{ports[service]}{PROBE}", headers)
            clients.append((Client(request, timeout=10.0), request))
        try:
            for i, (client, request) in enumerate(clients):  # warm-up: connections, caches, plans
                await _timed(client, request, 50, variants[i][3])
            for r in range(rounds):
                order = range(len(variants)) if r % 2 == 0 else reversed(range(len(variants)))
                for i in order:
                    client, request = clients[i]
                    samples[i] += await _timed(client, request, per_round, variants[i][3])
        finally:
            for client, _ in clients:
                client.close()
    rows = []
    for (service, label, _, status), values in zip(variants, samples, strict=True):
        values.sort()
        rows.append({"service": service, "credential": label, "status": status, "requests": len(values),
                     "p50_ms": round(percentile(values, 50), 3), "p95_ms": round(percentile(values, 95), 3),
                     "p99_ms": round(percentile(values, 99), 3)})  # fmt: skip
    base = {row["service"]: row["p50_ms"] for row in rows if row["credential"] == "no credential"}
    for row in rows:
        row["added_p50_ms"] = round(row["p50_ms"] - base[row["service"]], 3)
    bench.results["auth_cost"] = {"rounds": rounds, "per_round": per_round, "rows": rows}
    for row in rows:
        log(f"auth cost [{row['service']}] {row['credential']}: p50 {row['p50_ms']} ms "
            f"(+{row['added_p50_ms']}), p99 {row['p99_ms']} ms")  # fmt: skip


def targets(results: dict[str, Any], add: Any) -> None:
    ac = results.get("auth_cost")
    if not ac:
        return
    for row in ac["rows"]:
        if row["credential"] != "no credential":
            add(f"Resolving a credential adds <= {TARGET_ADDED_P50_MS:g} ms p50: {row['credential']}",
                f"+{row['added_p50_ms']} ms (p50 {row['p50_ms']} vs {[r['p50_ms'] for r in ac['rows'] if r['service'] == row['service'] and r['credential'] == 'no credential'][0]} ms without a credential)",
                row["added_p50_ms"] <= TARGET_ADDED_P50_MS)  # fmt: skip


def section(results: dict[str, Any]) -> list[str]:
    ac = results.get("auth_cost")
    if not ac:
        return []
    out = [
        "### What authenticating costs a request (concurrency 1)",
        "",
        "| service | credential | status | requests | p50 / p95 / p99 ms | added p50 ms |",
        "|---|---|---:|---:|---|---:|",
    ]
    for row in ac["rows"]:
        out.append(f"| {row['service']} | {row['credential']} | {row['status']} | {row['requests']} | "
                   f"{row['p50_ms']} / {row['p95_ms']} / {row['p99_ms']} | {row['added_p50_ms']:+} |")  # fmt: skip
    out += [
        "",
        f"`GET {PROBE}` authenticates and answers 404 without a database query, so a request with a "
        "credential differs from one without (401) by its resolution alone. Two services side by "
        "side: `default` (lookups remembered for CHATBOTS_AUTH_CACHE_SECONDS) and `no-cache` "
        "(CHATBOTS_AUTH_CACHE_SECONDS=0: a lookup every request), both with rate limits off (the "
        "no-credential requests would be counted as failed authentications). The OAuth token is a "
        "client-credentials token (it resolves, then the route's role check answers 403). "
        "Sequential requests on one "
        f"keep-alive connection per variant, {ac['rounds']} rounds of {ac['per_round']} each in "
        "alternating order after a warm-up of 50; added p50 = p50 − the same service's "
        "no-credential p50.",
        "",
    ]
    return out
