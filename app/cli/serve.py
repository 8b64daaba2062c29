"""Running the service: ``serve``, ``db upgrade`` and ``demo``."""

import asyncio
import dataclasses
import signal
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from app.cli._common import (
    Json,
    Opt,
    command_group,
    guarded,
    load_settings,
    print_done,
    print_json,
    run,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from app.config import Settings

db_app = command_group("Database schema migrations.")


def _display_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _local_urls(port: int) -> list[str]:
    """The addresses a browser on this machine reaches the service at (the /docs client's
    redirect URIs are matched exactly, so both loopback names are registered; plain http is
    allowed only to loopback: another address needs https and ``chatbots demo --base-url``)."""
    return [f"http://127.0.0.1:{port}", f"http://localhost:{port}"]


def _print_demo(info: Any, base_url: str, title: str) -> None:
    from app.demo import demo_curl

    lines = ["", title, f"  Demo chatbot: {info.chatbot_public_id} (model {info.model})"]
    if info.api_key:
        lines.append(f"  Demo API key (shown once, save it now): {info.api_key}")
    lines += ["", "Try it:", demo_curl(base_url, info.chatbot_public_id, info.api_key)]
    lines += ["", f"API docs: {base_url}/docs", ""]
    typer.echo("\n".join(lines))
    sys.stdout.flush()


def serve(
    host: Annotated[str, Opt(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, Opt(min=1, max=65535, help="Port to listen on.")] = 8000,
    workers: Annotated[
        int | None, Opt(min=1, help="Worker processes [default: CHATBOTS_SERVE_WORKERS, else 1].")
    ] = None,
) -> None:
    """Run the API server. The embedded default (SQLite) migrates itself and creates a demo."""
    from app.config import DEFAULT_DATABASE_URL

    from app.cli.checks import check_before_start
    from app.observability.logs import configure_logging

    settings = load_settings()
    workers = workers or settings.serve_workers
    configure_logging(settings)  # uvicorn's own lines too (log_config=None: they go to the root)
    check_before_start(settings)
    embedded = settings.database_url == DEFAULT_DATABASE_URL
    if embedded or settings.should_auto_migrate:

        async def prepare(session: "AsyncSession", settings: "Settings") -> Any:
            from app.demo import ensure_demo

            return await ensure_demo(session, settings, base_urls=_local_urls(port)) if embedded else None

        info = run(prepare, settings)
        if info is not None:
            title = "Chatbots API, embedded default (SQLite database ./chatbots.db)"
            _print_demo(info, f"http://{_display_host(host)}:{port}", title)

    if workers > 1 and settings.rate_limit_enabled and not settings.redis_url:
        typer.echo(
            f"Warning: {workers} workers count rate limits each in its own memory, so each allows "
            "the whole limit; set CHATBOTS_REDIS_URL to share one count.",
            err=True,
        )

    import uvicorn

    from app.connection_limits import uvicorn_options

    # uvicorn stops on SIGTERM by draining (no new connections, requests in flight finish within
    # CHATBOTS_SHUTDOWN_TIMEOUT_SECONDS, then the lifespan's shutdown), then raises the signal
    # again with the handler it found: this one, so a shutdown asked for ends with exit code 0,
    # not the default handler's death by signal (143), which supervisors report as a failure.
    signal.signal(signal.SIGTERM, _exit_after_shutdown)
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level.lower(),
        log_config=None,  # the root logger's format (app.observability.logs), not uvicorn's own
        access_log=False,  # RequestIdMiddleware writes one access line per request
        loop="auto",
        server_header=False,  # no "server: uvicorn" banner telling a scanner what to try
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
        **proxy_options(settings),
        **uvicorn_options(settings),
    )


def _exit_after_shutdown(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def proxy_options(settings: "Settings") -> dict[str, Any]:
    """How uvicorn treats X-Forwarded-* headers: believed from the configured proxies only, so
    a request's scheme (the session cookie's Secure flag) and client address are the proxy's
    word, never a client's."""
    return {"proxy_headers": True, "forwarded_allow_ips": settings.forwarded_allow_ips}


@db_app.command("upgrade")
def db_upgrade(as_json: Json = False) -> None:
    """Upgrade the database schema to the latest revision (safe to repeat)."""
    from sqlalchemy.engine import make_url

    from app.db import engine_for
    from app.migrate import upgrade_database

    settings = load_settings()

    async def main() -> None:
        engine = engine_for(settings)
        try:
            await upgrade_database(engine, settings)
        finally:
            await engine.dispose()

    guarded(lambda: asyncio.run(main()))
    url = make_url(settings.database_url).render_as_string(hide_password=True)
    print_done(as_json, {"upgraded": True, "database": url}, f"Database {url} is up to date.")


def demo(
    base_url: Annotated[str, Opt(help="The service's address, for the example curl.")] = (
        "http://127.0.0.1:8000"
    ),
    as_json: Json = False,
) -> None:
    """Create the demo team, user, API key and chatbot (once) and show how to call it."""
    from app.demo import demo_curl, ensure_demo

    base_url = base_url.rstrip("/")

    async def prepare(session: "AsyncSession", settings: "Settings") -> Any:
        return await ensure_demo(session, settings, base_urls=[base_url])

    info = run(prepare)
    if as_json:
        curl = demo_curl(base_url, info.chatbot_public_id, info.api_key)
        print_json(dataclasses.asdict(info) | {"curl": curl})
    else:
        _print_demo(info, base_url, "Chatbots API demo")
