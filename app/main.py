"""``create_app()``: middleware, routers, error handlers and the lifespan (``app.runtime``)."""

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.config import Settings, get_settings
from app.errors import install_error_handlers
from app.head_requests import HeadAsGetMiddleware
from app.observability.logs import configure_logging
from app.observability.requests import RequestIdMiddleware
from app.routers import accounts, channels, docs, health, metrics, oauth, oauth_consent, oauth_openapi, trigger
from app.routers.openapi_docs import install_openapi
from app.routers.widget_cors import WidgetCorsMiddleware
from app.runtime import open_runtime
from app.security_headers import SecurityHeadersMiddleware

DESCRIPTION = """Chatbots v1: send a user's message to a chatbot and get its reply; ask a chatbot to
write to a participant on a platform (`trigger_bot`).

Five credentials: an OAuth2 access token (`Authorization: Bearer <token>`; **Authorize** below runs
the authorization-code flow with PKCE), an API key (`X-api-key`, or `Authorization: Bearer <key>`),
a widget's embed key (`X-Embed-Key`: incoming_message only, from its allowed origins), or a
logged-in browser's `sessionid` cookie (log in at `/accounts/login`; unsafe requests then send the
`csrftoken` cookie's value in `X-CSRFToken`).
Errors are JSON: `{"detail": "..."}`; validation errors are 400 with an `errors` object."""


# The collector's young generation is scanned every GC_THRESHOLD[0] net allocations of container
# objects (CPython's default: 700). A turn allocates a few dozen, and at the default the scans
# (about 1 ms each here: everything a request holds is young) took ~6 % of a worker's CPU and
# added their pauses to every request in flight (measured with gc.callbacks at 64 concurrent
# turns). 7,000 makes them ten times rarer at no measurable memory cost (bench/RESULTS.md).
GC_THRESHOLD = (7000, 10, 10)


def tune_garbage_collector() -> None:
    """Once the worker is up: the objects made so far (modules, models, the app) are kept for the
    process's life, so ``gc.freeze()`` takes them out of every later full collection."""
    gc.set_threshold(*GC_THRESHOLD)
    gc.freeze()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_runtime(settings) as runtime:
            app.state.runtime = runtime
            # Shortcuts for the HTTP layer and the tests.
            app.state.engine = runtime.engine
            app.state.sessionmaker = runtime.sessionmaker
            app.state.driver_pool = runtime.driver_pool
            app.state.llm = runtime.llm
            tune_garbage_collector()
            if not settings.worker_in_process:
                yield
                return
            from app.services.delivery_worker import DeliveryWorker

            worker = DeliveryWorker(runtime)
            running = asyncio.create_task(worker.run())
            try:
                yield
            finally:  # the server is stopping: sends in flight finish first, within a bound
                await worker.stop_and_drain(running, settings.shutdown_timeout_seconds)

    app = FastAPI(
        title="Chatbots API",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        redirect_slashes=False,
        docs_url=None,  # served by app.routers.docs from local assets
        redoc_url=None,
    )
    app.state.settings = settings
    app.add_middleware(WidgetCorsMiddleware)  # inside RequestIdMiddleware: preflights get an id too
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(SecurityHeadersMiddleware)  # outside it: its headers wait for RequestIdMiddleware
    app.add_middleware(HeadAsGetMiddleware)  # outermost: everything inside sees a GET
    install_error_handlers(app)
    app.include_router(health.router)
    if settings.metrics_enabled:
        app.include_router(metrics.router)
    app.include_router(channels.router)
    app.include_router(trigger.router)
    app.include_router(docs.router)
    app.include_router(accounts.router)
    app.include_router(oauth.router)
    app.include_router(oauth_consent.router)
    install_openapi(app, form_schemas=oauth_openapi.FORM_SCHEMAS)
    return app
