"""``GET /metrics``: Prometheus's text format (not in the OpenAPI document).

The process's counters and histograms (``app.observability.metrics``), then what is read for
each scrape: the delivery backlog from the database (one statement through the store, on the
backlog's index: ``outbox.delivery_backlog``) and this process's connection pools. Off with
``CHATBOTS_METRICS_ENABLED=false`` (404); with ``CHATBOTS_METRICS_TOKEN`` set, only for
``Authorization: Bearer <that token>``.
"""

import asyncio
import hmac
import logging
from collections.abc import Iterable
from datetime import UTC
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, REGISTRY, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from app.channels.outbox import delivery_backlog
from app.db import utcnow
from app.errors import NotAuthenticated

if TYPE_CHECKING:
    from app.runtime import Runtime

log = logging.getLogger(__name__)

# How long a scrape waits for the database (a pool busy with turns, a database away).
SCRAPE_DATABASE_SECONDS = 5.0


class _Families:
    """What ``generate_latest`` needs of a registry: the families read for one scrape."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def pool_families(runtime: "Runtime") -> list[Metric]:
    """This process's pools: the turn's asyncpg pool (``driver``, PostgreSQL only) and
    SQLAlchemy's (``sqlalchemy``: everything else), connections in use and idle, and size."""
    connections = GaugeMetricFamily(
        "chatbots_db_pool_connections",
        "Open database connections of this process, by pool and state (in_use, idle).",
        labels=["pool", "state"],
    )
    sizes = GaugeMetricFamily(
        "chatbots_db_pool_size",
        "Connections a pool keeps (CHATBOTS_DATABASE_POOL_SIZE; SQLAlchemy's may open up to "
        "CHATBOTS_DATABASE_MAX_OVERFLOW more).",
        labels=["pool"],
    )
    driver = runtime.driver_pool
    if driver is not None:
        idle = driver.get_idle_size()
        connections.add_metric(["driver", "in_use"], driver.get_size() - idle)
        connections.add_metric(["driver", "idle"], idle)
        sizes.add_metric(["driver"], driver.get_max_size())
    pool = runtime.engine.pool
    if hasattr(pool, "checkedout"):  # a queue pool (not SQLite's in-memory static pool)
        connections.add_metric(["sqlalchemy", "in_use"], pool.checkedout())
        connections.add_metric(["sqlalchemy", "idle"], pool.checkedin())
        sizes.add_metric(["sqlalchemy"], pool.size())
    return [connections, sizes]


async def backlog_families(runtime: "Runtime") -> list[Metric]:
    """The deliveries not final yet, by state, and the oldest one's age; and whether the
    database answered (when it did not, the backlog is left out rather than shown stale)."""
    up = GaugeMetricFamily(
        "chatbots_database_up", "Whether the database answered this scrape's query (1) or not (0)."
    )
    try:
        async with asyncio.timeout(SCRAPE_DATABASE_SECONDS):
            backlog = await delivery_backlog(runtime.store)
    except Exception as exc:  # a scrape reports the database's absence; it does not fail
        log.warning("metrics: cannot read the delivery backlog: %s", type(exc).__name__)
        up.add_metric([], 0)
        return [up]
    up.add_metric([], 1)
    deliveries = GaugeMetricFamily(
        "chatbots_deliveries",
        "Deliveries not final yet, by state (pending: waiting for an attempt; sending: claimed).",
        labels=["state"],
    )
    oldest = GaugeMetricFamily(
        "chatbots_delivery_oldest_pending_age_seconds",
        "Age of the oldest delivery not final yet (pending or sending); 0 when there is none.",
    )
    now, ages = utcnow(), [0.0]
    for state in ("pending", "sending"):
        count, created = backlog.get(state, (0, None))
        deliveries.add_metric([state], count)
        if created is not None:
            if created.tzinfo is None:  # a driver that drops the zone: stored as UTC
                created = created.replace(tzinfo=UTC)
            ages.append((now - created).total_seconds())
    oldest.add_metric([], max(ages))
    return [up, deliveries, oldest]


def _bearer_matches(request: Request, token: str) -> bool:
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.encode(), token.encode())


router = APIRouter(include_in_schema=False)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    token = request.app.state.settings.metrics_token
    if token and not _bearer_matches(request, token):
        raise NotAuthenticated("A valid metrics token is required (Authorization: Bearer).")
    runtime = request.app.state.runtime
    scraped = pool_families(runtime) + await backlog_families(runtime)
    body = generate_latest(REGISTRY) + generate_latest(_Families(scraped))  # type: ignore[arg-type]
    return Response(body, media_type=CONTENT_TYPE_PLAIN_0_0_4)  # what generate_latest writes
