"""Hardening: inputs and client behaviours at the edges that must still get a clean, JSON answer
(or, where no answer can be delivered, a quiet log line), and no traceback."""

import asyncio
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import IntegrityError
from starlette.types import Message

from tests.assertions import assert_error, nothing_written
from tests.server import free_port, serve, wait_for_banner

# --- a version number too long to convert ---------------------------------------------------------


async def test_a_version_longer_than_int_conversion_allows_is_404_json(client, db, world):
    """Python refuses to convert a string of over 4,300 digits to int (ValueError): the router
    must reject long digit strings before converting, not answer a plain-text 500."""
    version = "1" * 4301
    async with nothing_written(db, world):
        r = await client.post(world.version_url(version), json={"message": "hi"}, headers=world.headers)
    assert_error(r, 404, {"detail": f"Chatbot version {version} not found."})


async def test_leading_zeros_still_name_the_version(client, world):
    """The length check counts significant digits only: ``v000…01`` is still version 1, even
    with more zeros than int() would convert."""
    r = await client.post(world.version_url("0" * 5000 + "1"), json={"message": "hi"}, headers=world.headers)
    assert r.status_code == 200, r.text


# --- a credential header sent more than once ------------------------------------------------------

DUPLICATE_CREDENTIAL = {"detail": "Credential header sent more than once."}


@pytest.mark.parametrize(
    "make_headers",
    [
        pytest.param(lambda key: [("X-api-key", key), ("X-api-key", "bogus.key")], id="api-key-good-first"),
        pytest.param(lambda key: [("X-api-key", "bogus.key"), ("X-api-key", key)], id="api-key-bogus-first"),
        pytest.param(lambda key: [("X-api-key", key), ("x-API-KEY", key)], id="api-key-same-twice-any-case"),
        pytest.param(
            lambda key: [("Authorization", f"Bearer {key}"), ("Authorization", "Bearer bogus.key")],
            id="authorization-good-first",
        ),
        pytest.param(
            lambda key: [("Authorization", f"Bearer {key}"), ("Authorization", "Basic Zm9vOmJhcg==")],
            id="authorization-bearer-and-basic",
        ),
        pytest.param(
            lambda key: [("X-api-key", key), ("X-Embed-Key", "w" * 32), ("X-Embed-Key", "v" * 32)],
            id="embed-key-twice",
        ),
    ],
)
async def test_a_credential_header_sent_twice_is_refused(client, db, world, make_headers):
    """Only the first copy of a repeated header used to be judged, while a proxy in front may
    judge another (or join them): refuse the request so that the two never disagree about who
    the caller is."""
    headers = make_headers(world.key)
    async with nothing_written(db, world):
        r = await client.post(world.url, json={"message": "hi"}, headers=headers)
    assert_error(r, 401, DUPLICATE_CREDENTIAL)


async def test_each_credential_header_once_is_still_accepted(client, world):
    """Different credential headers together are not duplicates: each is checked (SPEC §4)."""
    headers = [("X-api-key", world.key), ("Authorization", f"Bearer {world.key}")]
    r = await client.post(world.url, json={"message": "hi"}, headers=headers)
    assert r.status_code == 200, r.text


# --- a client that disconnects in the middle of its body ------------------------------------------


async def call_asgi(
    app: Any,
    path: str,
    headers: list[tuple[str, str]],
    receive: Callable[[], Awaitable[Message]],
    method: str = "POST",
) -> list[Message]:
    """One HTTP request as an ASGI server makes it, with the client's side played by
    ``receive``; returns what the app sent."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 50000), "server": ("test", 80), "state": {},
        "headers": [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers],
    }  # fmt: skip
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def partial_body_then(after: Callable[[], Awaitable[Message]]) -> Callable[[], Awaitable[Message]]:
    """A client that sends the first bytes of a JSON body, then behaves as ``after`` says."""
    chunks = iter([{"type": "http.request", "body": b'{"message": "hel', "more_body": True}])

    async def receive() -> Message:
        chunk = next(chunks, None)
        return chunk if chunk is not None else await after()

    return receive


def body_headers(world: Any) -> list[tuple[str, str]]:
    return [("x-api-key", world.key), ("content-type", "application/json"), ("content-length", "100")]


async def test_a_client_disconnecting_mid_body_is_one_info_line_not_a_traceback(app, db, world, caplog):
    """Starlette raises ClientDisconnect when the client goes away during the body; unhandled,
    it reached the server as an exception (a ~70-line ERROR traceback in uvicorn's log)."""

    async def disconnect() -> Message:
        return {"type": "http.disconnect"}

    caplog.set_level(logging.INFO)
    async with nothing_written(db, world):
        sent = await asyncio.wait_for(
            call_asgi(app, world.url, body_headers(world), partial_body_then(disconnect)), 10
        )
    # The request ends with a complete (400) answer, which a server drops: no one is listening.
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 400
    assert sent[-1]["type"] == "http.response.body" and not sent[-1].get("more_body")
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    lines = [r for r in caplog.records if r.name.startswith("app") and "disconnected" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO, caplog.text
    assert lines[0].exc_info is None


def test_a_real_server_logs_a_mid_body_disconnect_in_one_info_line(tmp_path):
    """The same over a real socket to a real ``chatbots serve``: headers and part of the body,
    then the connection is closed. The server's log gets one INFO line, no ERROR, no traceback."""
    port = free_port()
    proc = serve(tmp_path, port)
    output: list[str] = []
    try:
        banner = wait_for_banner(proc, port)
        key = next(line for line in banner if "Demo API key" in line).rsplit(" ", 1)[1]
        url = next(word for word in next(line for line in banner if line.startswith("curl ")).split() if "/channels/" in word)
        path = url.split(f":{port}", 1)[1]
        reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
        reader.start()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-api-key: {key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n".encode() + b'{"message": "hel'
            )
            time.sleep(0.3)  # let the app start reading the body before the client goes away
        deadline = time.monotonic() + 10
        while not any("disconnected" in line for line in output) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)
    reader.join(5)
    log = "".join(output)
    assert len([line for line in output if "disconnected" in line]) == 1, log
    assert " INFO " in next(line for line in output if "disconnected" in line), log
    assert "Traceback" not in log and "ERROR" not in log, log


# --- a client that stalls in the middle of its body -----------------------------------------------


@asynccontextmanager
async def app_with(settings: Any, **overrides: Any) -> AsyncIterator[Any]:
    """An app of its own, started, with some settings changed."""
    from app.main import create_app

    application = create_app(settings.model_copy(update=overrides))
    async with application.router.lifespan_context(application):
        yield application


async def never() -> Message:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def trickle() -> Callable[[], Awaitable[Message]]:
    """A client that keeps sending, one byte every 50 ms: each chunk comes in time, the whole
    body never does."""

    async def receive() -> Message:
        await asyncio.sleep(0.05)
        return {"type": "http.request", "body": b" ", "more_body": True}

    return receive


@pytest.mark.parametrize("after", [pytest.param(never, id="stalls"), pytest.param(trickle(), id="trickles")])
async def test_a_body_not_received_in_time_is_408(settings, db, world, caplog, after):
    """Headers and part of a body, then nothing (or a trickle): 408 after the configured time,
    instead of a request (and what it holds) kept open for as long as the client likes."""
    caplog.set_level(logging.INFO)
    async with app_with(settings, body_timeout_seconds=0.3) as app:
        started = time.monotonic()
        async with nothing_written(db, world):
            sent = await asyncio.wait_for(call_asgi(app, world.url, body_headers(world), partial_body_then(after)), 10)
        elapsed = time.monotonic() - started
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    assert start["status"] == 408, sent
    headers = {name.decode(): value.decode() for name, value in start["headers"]}
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert json.loads(body) == {"detail": "Timed out reading the request body."}
    assert 0.3 <= elapsed < 5
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_the_body_timeout_is_read_from_its_variable_and_defaults_to_30_seconds(monkeypatch):
    from app.config import Settings

    monkeypatch.delenv("CHATBOTS_BODY_TIMEOUT_SECONDS", raising=False)
    assert Settings(_env_file=None).body_timeout_seconds == 30.0
    monkeypatch.setenv("CHATBOTS_BODY_TIMEOUT_SECONDS", "2.5")
    assert Settings(_env_file=None).body_timeout_seconds == 2.5


# --- an unexpected exception ----------------------------------------------------------------------

INTERNAL = "Internal server error."


def failing_app(settings: Any, exc: Exception) -> Any:
    """The real app plus one route that raises ``exc`` (no database needed: not started)."""
    from app.main import create_app

    application = create_app(settings)

    async def boom() -> None:
        raise exc

    application.add_api_route("/test-only/boom", boom, methods=["GET"])
    return application


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    "exc",
    [
        pytest.param(RuntimeError("a bug"), id="bug"),
        # A database error that is not an outage: errors.py's database handler re-raises it.
        pytest.param(IntegrityError("INSERT ...", {}, Exception("duplicate key")), id="sql-bug"),
    ],
)
@pytest.mark.parametrize("sent_id", [None, "client-chose-this-id"])
async def test_an_unexpected_exception_is_a_json_500_with_the_request_id_logged_once(settings, caplog, exc, sent_id):
    app = failing_app(settings, exc)
    headers = {"X-Request-ID": sent_id} if sent_id else {}
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        r = await http.get("/test-only/boom", headers=headers)
    assert r.status_code == 500, r.text
    assert r.headers["content-type"] == "application/json"
    [request_id] = r.headers.get_list("x-request-id")  # once, not once per layer
    assert request_id == sent_id if sent_id else len(request_id) == 32  # the client's, or a new one
    assert r.json() == {"detail": INTERNAL, "request_id": request_id}
    assert r.headers["x-content-type-options"] == "nosniff"  # the security headers too
    # Logged once, with its traceback and the request id to find it by.
    [record] = errors_logged(caplog)
    assert record.exc_info is not None and record.exc_info[1] is exc
    assert request_id in record.getMessage()


async def test_an_unexpected_exception_does_not_reach_the_server(settings, caplog):
    """Not re-raised after the answer: the server would log it a second time (uvicorn's
    "Exception in ASGI application" traceback)."""
    app = failing_app(settings, RuntimeError("a bug"))

    requests = iter([{"type": "http.request", "body": b"", "more_body": False}])

    async def receive() -> Message:
        return next(requests, None) or await never()

    sent = await call_asgi(app, "/test-only/boom", [], receive, method="GET")  # raises if it escapes
    assert sent[0]["status"] == 500
    assert len(errors_logged(caplog)) == 1


async def test_an_exception_outside_the_request_id_middleware_is_still_a_json_500_with_its_id(settings, caplog):
    """An exception that escapes RequestIdMiddleware (here: from a middleware added outside it
    later) reaches Starlette's ServerErrorMiddleware, whose answer is plain text unless the
    app has an ``Exception`` handler: errors.py's gives the same JSON 500 and sets X-Request-ID
    itself. That exception goes on to the server, which logs it, so the app does not log it."""
    app = failing_app(settings, RuntimeError("unused"))

    class FailingMiddleware:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            raise RuntimeError("a bug in an outer middleware")

    app.add_middleware(FailingMiddleware)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        r = await http.get("/healthz", headers={"X-Request-ID": "outer-1"})
    assert r.status_code == 500, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.headers.get_list("x-request-id") == ["outer-1"]
    assert r.json() == {"detail": INTERNAL, "request_id": "outer-1"}
    assert errors_logged(caplog) == []


# --- the database pool's size has one source: the settings ----------------------------------------


def test_make_engine_takes_its_pool_sizes_from_the_caller_only(settings):
    """make_engine had defaults (20 + 20) that disagreed with the settings (5 + 0): a caller
    that forgot them got a pool four times larger than configured, silently."""
    from app.db import make_engine

    with pytest.raises(TypeError):
        make_engine(settings.database_url)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        make_engine(settings.database_url, 5, 0)  # type: ignore[misc]


async def test_the_service_pools_have_the_configured_sizes(settings):
    """The settings reach both pools of a worker (a guard: this held before, through main.py)."""
    if settings.is_sqlite:
        pytest.skip("make_engine gives SQLite SQLAlchemy's own pool (5 + 10), whatever the settings")
    async with app_with(settings, database_pool_size=3, database_max_overflow=2) as app:
        pool = app.state.engine.pool
        assert (pool.size(), pool._max_overflow) == (3, 2)
        assert app.state.driver_pool.get_max_size() == 3


# --- dead code stays removed ----------------------------------------------------------------------


def test_unused_names_are_gone():
    """Nothing used them (grep): ``ENDED_STATUSES``, ``Chatbot.head_id`` and the
    ``admin.publish`` alias of ``admin.publish_chatbot``."""
    import app.models
    from app.models import Chatbot
    from app.services import admin

    assert not hasattr(app.models, "ENDED_STATUSES")
    assert not hasattr(app.models.conversation, "ENDED_STATUSES")
    assert not hasattr(Chatbot, "head_id")
    assert not hasattr(admin, "publish") and "publish" not in admin.__all__
    assert callable(admin.publish_chatbot)


# --- idempotency_record.status_code: only ever 200, dropped by migration 0003 ---------------------


@asynccontextmanager
async def fresh_database(settings: Any, tmp_path: Any) -> AsyncIterator[Any]:
    """An empty database on the suite's backend: a new SQLite file, or a new PostgreSQL schema
    (first on the search path) in the test database."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from app.db import make_engine

    if settings.is_sqlite:
        engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/fresh.db", pool_size=1, max_overflow=0)
        try:
            yield engine
        finally:
            await engine.dispose()
        return
    schema = f"fresh_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(settings.database_url)
    async with admin.begin() as connection:
        await connection.execute(text(f"CREATE SCHEMA {schema}"))
    engine = create_async_engine(
        settings.database_url, connect_args={"server_settings": {"search_path": schema}}
    )
    try:
        yield engine
    finally:
        await engine.dispose()
        async with admin.begin() as connection:
            await connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        await admin.dispose()


async def alembic(engine: Any, action: str, revision: str, settings: Any = None) -> None:
    from alembic import command

    from app.migrate import alembic_config

    cfg = alembic_config(engine.url.render_as_string(hide_password=False), settings)

    def run(connection: Any) -> None:
        cfg.attributes["connection"] = connection
        getattr(command, action)(cfg, revision)

    async with engine.begin() as connection:
        await connection.run_sync(run)


async def idempotency_rows(engine: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The table's columns, and its rows as (key, [status_code,] response)."""
    from sqlalchemy import inspect, text

    async with engine.connect() as connection:
        columns = await connection.run_sync(
            lambda sync: [c["name"] for c in inspect(sync).get_columns("idempotency_record")]
        )
        shown = ", ".join(c for c in ("key", "status_code", "response") if c in columns)
        rows = (await connection.execute(text(f"SELECT {shown} FROM idempotency_record ORDER BY key"))).all()
    # A plain text() query: SQLite gives the JSON response as text, asyncpg decodes it.
    return columns, [(*row[:-1], json.loads(row[-1]) if isinstance(row[-1], str) else row[-1]) for row in rows]


async def test_migration_0003_drops_idempotency_status_code_and_its_downgrade_restores_it(settings, tmp_path):
    """The column was only ever set to 200, next to the stored response, and never read. The
    migration keeps every record; its downgrade gives answered records their 200 back."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import text

    from app.models import Base

    answered = {"response": "hi", "attachments": [], "session_id": "s-1"}
    async with fresh_database(settings, tmp_path) as engine:
        await alembic(engine, "upgrade", "0001")
        async with engine.begin() as connection:
            for key, status, response in [("a-answered", 200, json.dumps(answered)), ("b-claimed", None, None)]:
                await connection.execute(
                    text(
                        "INSERT INTO idempotency_record (credential, key, request_hash, status_code, response, created_at) "
                        "VALUES ('api_key:1', :key, 'h', :status, :response, :created_at)"
                    ),
                    {"key": key, "status": status, "response": response, "created_at": datetime.now(UTC)},
                )

        await alembic(engine, "upgrade", "head")
        columns, rows = await idempotency_rows(engine)
        assert "status_code" not in columns
        assert rows == [("a-answered", answered), ("b-claimed", None)]
        async with engine.connect() as connection:
            diff = await connection.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync, opts={"compare_type": True}), Base.metadata)
            )
        assert diff == []

        await alembic(engine, "downgrade", "0002")
        columns, rows = await idempotency_rows(engine)
        assert "status_code" in columns
        assert rows == [("a-answered", 200, answered), ("b-claimed", None, None)]

        await alembic(engine, "upgrade", "head")
        assert "status_code" not in (await idempotency_rows(engine))[0]


def test_idempotency_records_have_no_status_code():
    from app.models import IdempotencyRecord

    assert "status_code" not in IdempotencyRecord.__table__.columns
