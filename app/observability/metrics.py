"""Prometheus metrics, served at ``GET /metrics`` (``app.routers.metrics``).

Counted as things happen, in this process (microseconds each, no lock held across an await):
requests by method, route template and status with a latency histogram (``observe_request``,
from ``RequestIdMiddleware``); model calls by provider type and outcome with a latency
histogram (``observe_llm_call``, from ``LlmClient.complete``, which every model call goes
through); delivery attempts by outcome (``count_delivery_attempt``, from the delivery worker).

Read at each scrape (``app.routers.metrics``): the delivery backlog from the database and this
process's connection pools.

One process, one set of numbers: with ``chatbots serve --workers N`` a scrape is answered by
whichever worker accepts the connection, so counters would seem to jump between workers'
values. Run one worker per replica (the compose topology) and scrape each replica; the
database-wide figures (the backlog) are the same from every process. prometheus-client's
multiprocess mode was not used: it needs a shared directory set before the first import and
cleaned up per worker, and it cannot serve the read-at-scrape gauges per process.
"""

from typing import Any

from prometheus_client import Counter, Histogram

HTTP_REQUESTS = Counter(
    "chatbots_http_requests",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "chatbots_http_request_duration_seconds",
    "Time from a request's arrival to its last response byte, by method and route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
LLM_CALLS = Counter(
    "chatbots_llm_calls",
    "Model completions, by provider type and outcome (ok, error, timeout, cancelled).",
    ["provider_type", "outcome"],
)
LLM_DURATION = Histogram(
    "chatbots_llm_call_duration_seconds",
    "Time a model completion took, retries included, by provider type.",
    ["provider_type"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 90),
)
DELIVERY_ATTEMPTS = Counter(
    "chatbots_delivery_attempts",
    "Delivery attempts by this process's delivery worker, by the state they left the delivery "
    "in (sent; pending: retried later; failed; skipped; error: an unexpected failure).",
    ["outcome"],
)

# A label value per method a client can send would let any client add series: the rest are
# counted as "other". Requests no route matched share one route label for the same reason.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"


# The labelled children per (method, route, status), looked up once: ``labels()`` validates and
# locks at every call, which was about half of a request's cost here. Bounded like the labels.
_REQUEST_CHILDREN: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    method = method if method in METHODS else "other"
    children = _REQUEST_CHILDREN.get((method, route, status))
    if children is None:
        children = _REQUEST_CHILDREN[(method, route, status)] = (
            HTTP_REQUESTS.labels(method, route, str(status)),
            HTTP_DURATION.labels(method, route),
        )
    children[0].inc()
    children[1].observe(seconds)


def observe_llm_call(provider_type: str, outcome: str, seconds: float) -> None:
    LLM_CALLS.labels(provider_type, outcome).inc()
    LLM_DURATION.labels(provider_type).observe(seconds)


def count_delivery_attempt(outcome: str) -> None:
    DELIVERY_ATTEMPTS.labels(outcome).inc()


