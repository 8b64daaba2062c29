"""``GET /metrics`` through the ASGI app on the database under test: what a request, a model
call and a delivery leave in the counters, what is read at each scrape (the delivery backlog,
the pools), and who may read it."""

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import update

from app.db import utcnow
from app.main import create_app
from app.models import Delivery
from tests.assertions import assert_error
from tests.factories import make_world
from tests.oauth_helpers import add_api_channel, trigger_body
from tests.prometheus import parse, scrape, value

TURN_ROUTE = "/channels/api/{experiment_id}/incoming_message"


@contextlib.asynccontextmanager
async def app_client(settings: Any, **overrides: Any) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """An app of its own, started, with some settings changed."""
    app = create_app(settings.model_copy(update=overrides))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            yield app, client


async def test_requests_are_counted_by_route_template_and_status_never_by_raw_path(client, world):
    before = await scrape(client)
    assert (await client.post(world.url, json={"message": "hi"}, headers=world.headers)).status_code == 200
    assert (await client.post(world.url, json={"message": "hi"}, headers={"X-api-key": "nope"})).status_code == 401
    assert (await client.get(f"/no/such/{uuid.uuid4()}")).status_code == 404
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("chatbots_http_requests_total", method="POST", route=TURN_ROUTE, status="200") == 1
    assert delta("chatbots_http_requests_total", method="POST", route=TURN_ROUTE, status="401") == 1
    assert delta("chatbots_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert delta("chatbots_http_request_duration_seconds_count", method="POST", route=TURN_ROUTE) == 2
    assert delta("chatbots_http_request_duration_seconds_sum", method="POST", route=TURN_ROUTE) > 0
    routes = {dict(labels).get("route") for _, labels in after}
    assert not any(str(world.chatbot.public_id) in str(route) or "/no/such" in str(route) for route in routes)


async def test_model_calls_are_counted_by_provider_type_with_latency_and_errors(client, db, settings, fake_llm):
    before = await scrape(client)
    ok = await make_world(db, settings, api_base=fake_llm.base_url)
    failing = await make_world(db, settings, api_base=fake_llm.base_url, model="fail-400")
    assert (await client.post(ok.url, json={"message": "hi"}, headers=ok.headers)).status_code == 200
    assert (await client.post(failing.url, json={"message": "hi"}, headers=failing.headers)).status_code == 502
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("chatbots_llm_calls_total", provider_type="openai_compatible", outcome="ok") == 1
    assert delta("chatbots_llm_calls_total", provider_type="openai_compatible", outcome="error") == 1
    assert delta("chatbots_llm_call_duration_seconds_count", provider_type="openai_compatible") == 2


async def test_a_model_that_times_out_is_counted_as_a_timeout(settings, fake_llm):
    async with app_client(settings, llm_timeout_seconds=0.2, llm_total_timeout_seconds=0.3, llm_max_retries=0) as (app, client):
        world = await make_world(app.state.sessionmaker, settings, api_base=fake_llm.base_url, model="hang")
        before = await scrape(client)
        assert (await client.post(world.url, json={"message": "hi"}, headers=world.headers)).status_code == 504
        after = await scrape(client)
    labels = {"provider_type": "openai_compatible", "outcome": "timeout"}
    assert value(after, "chatbots_llm_calls_total", **labels) - value(before, "chatbots_llm_calls_total", **labels) == 1


async def test_the_delivery_backlog_and_its_oldest_age_are_read_at_each_scrape(client, db, world):
    await add_api_channel(db, world)
    before = await scrape(client)
    r = await client.post("/api/trigger_bot", json=trigger_body(world), headers=world.headers)
    assert r.status_code == 200, r.text
    delivery_id = uuid.UUID(r.json()["delivery_id"])
    async with db() as s:  # made an hour ago, still pending (no worker runs in this app)
        await s.execute(update(Delivery).where(Delivery.public_id == delivery_id)
                        .values(created_at=utcnow() - timedelta(hours=1)))  # fmt: skip
        await s.commit()
    try:
        after = await scrape(client)
    finally:  # final again: later tests see the backlog as it was
        async with db() as s:
            await s.execute(update(Delivery).where(Delivery.public_id == delivery_id).values(status="failed"))
            await s.commit()
    assert value(after, "chatbots_database_up") == 1
    assert value(after, "chatbots_deliveries", state="pending") - value(before, "chatbots_deliveries", state="pending") == 1
    assert ("chatbots_deliveries", (("state", "sending"),)) in after  # shown even at 0
    assert value(after, "chatbots_delivery_oldest_pending_age_seconds") >= 3600


async def test_pool_usage_is_reported_per_pool(client, app):
    samples = await scrape(client)
    pools = {"sqlalchemy"} | ({"driver"} if app.state.driver_pool is not None else set())
    for pool in pools:
        assert ("chatbots_db_pool_connections", (("pool", pool), ("state", "in_use"))) in samples
        assert ("chatbots_db_pool_connections", (("pool", pool), ("state", "idle"))) in samples
        assert value(samples, "chatbots_db_pool_size", pool=pool) >= 1
    if app.state.driver_pool is not None:
        assert value(samples, "chatbots_db_pool_size", pool="driver") == app.state.settings.database_pool_size


async def test_a_database_away_is_reported_and_the_scrape_still_answers(tmp_path, settings):
    missing = f"sqlite+aiosqlite:///{tmp_path}/not-there/db.sqlite"
    async with app_client(settings, database_url=missing) as (_, client):
        samples = await scrape(client)
    assert value(samples, "chatbots_database_up") == 0
    assert not any(name == "chatbots_deliveries" for name, _ in samples)  # absent, not stale
    assert any(name == "chatbots_http_requests_total" for name, _ in samples)


async def test_with_a_token_set_metrics_are_401_without_it(settings):
    async with app_client(settings, metrics_token="scrape-secret") as (_, client):
        r = await client.get("/metrics")
        assert_error(r, 401, {"detail": "A valid metrics token is required (Authorization: Bearer)."})
        assert r.headers["www-authenticate"].startswith("Bearer")
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer scrape-secreT"})
        assert_error(wrong, 401, {"detail": "A valid metrics token is required (Authorization: Bearer)."})
        samples = await scrape(client, Authorization="Bearer scrape-secret")
    assert any(name == "chatbots_http_requests_total" for name, _ in samples)


async def test_metrics_turned_off_are_404(settings):
    async with app_client(settings, metrics_enabled=False) as (_, client):
        assert_error(await client.get("/metrics"), 404)


async def test_metrics_are_not_in_the_openapi_document(client):
    assert "/metrics" not in (await client.get("/openapi.json")).json()["paths"]


def test_an_unknown_method_is_one_label_not_one_series_per_client_whim():
    from app.observability.metrics import observe_request
    from prometheus_client import REGISTRY, generate_latest

    observe_request("BREW", "unmatched", 405, 0.001)
    samples = parse(generate_latest(REGISTRY).decode())
    assert value(samples, "chatbots_http_requests_total", method="other", route="unmatched", status="405") >= 1
    assert not any(dict(labels).get("method") == "BREW" for _, labels in samples)
