"""Engine, sessions and the few dialect differences between PostgreSQL and SQLite."""

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import asyncpg
import orjson
from fastapi import Depends, Request
from sqlalchemy import event, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

if TYPE_CHECKING:
    from app.config import Settings

T = TypeVar("T")
# What the driver raises when the database is away rather than wrong: a connection refused or
# lost, and the server's own "go away" errors while it shuts down (57P01), after another
# backend crashed (57P02) and while it recovers from a crash ("the database system is starting
# up", 57P03: the first seconds after a restart). And asyncpg's InternalClientError ("cannot
# switch to state 12; another operation is in progress"): a pooled connection whose server was
# killed in the middle of an operation, met at the crash (bench/outage.py saw a 500 from it).
DB_GONE = (
    OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError, asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError, asyncpg.CannotConnectNowError, asyncpg.InternalClientError,
)  # fmt: skip
# Execution option of connections that only read: on SQLite they begin a deferred transaction,
# which takes no write lock (app.stores.sqlalchemy_store).
READ_ONLY = "chatbots_read_only"


def utcnow() -> datetime:
    return datetime.now(UTC)


def json_dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


# JSON columns (state, metadata, configs, history aggregates) through orjson, not stdlib json.
_JSON = {"json_serializer": json_dumps, "json_deserializer": orjson.loads}


def make_engine(url: str, *, pool_size: int, max_overflow: int) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30}, **_JSON)
        _configure_sqlite(engine)
        return engine
    # No pre-ping: it costs a round trip per checkout (three per turn). A connection found dead
    # fails its request with a 503 and SQLAlchemy then discards the whole pool, so the service
    # recovers on its own once the database is back.
    return create_async_engine(
        url, pool_size=pool_size, max_overflow=max_overflow, pool_recycle=1800, **_JSON
    )


def engine_for(settings: "Settings") -> AsyncEngine:
    """The engine the settings describe: the one place pool sizes come from."""
    return make_engine(
        settings.database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )


def _configure_sqlite(engine: AsyncEngine) -> None:
    """WAL, foreign keys, and BEGIN IMMEDIATE for transactions that may write.

    SQLite's deferred transactions fail at once with "database is locked" when a reader upgrades
    to a writer while another writer is active; taking the write lock at BEGIN makes concurrent
    transactions queue on the busy timeout instead. Transactions here are short (never held
    across an LLM call or a request body), so serialising them is cheap. Connections marked
    ``READ_ONLY`` begin a deferred transaction: a read takes no write lock and waits for none.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let the "begin" hook below issue BEGIN
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        read_only = conn.get_execution_options().get(READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def driver_dsn(url: str) -> str:
    """The asyncpg DSN of a ``postgresql+asyncpg://`` URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def make_driver_pool(url: str, size: int) -> asyncpg.Pool | None:
    """PostgreSQL only: a plain asyncpg pool for the turn's store (app/stores/postgres_store.py),
    which runs its few statements on the driver without SQLAlchemy's per-statement and
    per-session cost. Everything else uses the engine's pool."""
    if not url.startswith("postgresql"):
        return None
    dsn = driver_dsn(url)
    # min_size 0: no connection at start-up, so the service starts (and answers 503) while the
    # database is down, and connects once it is up.
    # force_generic_plan: PostgreSQL plans each prepared statement of the hot path once per
    # connection instead of at every execution. By default it keeps re-planning a statement
    # whose generic plan does not look cheaper than the custom ones, and for these few it did:
    # planning was about half of the server's time per turn (0.3 ms at every bind of the claim
    # statement alone, in the statement log). Their generic plans are the same index lookups.
    return await asyncpg.create_pool(
        dsn, min_size=0, max_size=size, init=_init_driver_connection, reset=_no_session_reset,
        server_settings={"plan_cache_mode": "force_generic_plan"},
    )  # fmt: skip


async def _no_session_reset(connection: asyncpg.Connection) -> None:
    """asyncpg's default reset sends ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL`` on every release: a round trip per checkout, three per turn. The store sets
    no session state (no advisory locks, cursors, LISTEN or SET); an open transaction is still
    rolled back by asyncpg before this hook runs."""


async def _init_driver_connection(connection: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await connection.set_type_codec(
            name, schema="pg_catalog", encoder=_json_text, decoder=orjson.loads
        )


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else json_dumps(value)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One request, one database session: committed on success, rolled back on error."""
    async with request.app.state.sessionmaker() as session:
        try:
            yield session
            if session.in_transaction():  # nothing begun (the driver path): nothing to commit
                await session.commit()
        except BaseException:
            await session.rollback()
            raise


SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def insert_or_get(
    session: AsyncSession,
    find: Callable[[], Awaitable[T | None]],
    build: Callable[[], T],
) -> T:
    """Get a row, or create it; safe against a concurrent creator of the same unique row.

    The insert runs in a savepoint: if another transaction won the race, the unique constraint
    fails, the savepoint rolls back and the winner's row is read instead.
    """
    found = await find()
    if found is not None:
        return found
    row = build()
    try:
        async with session.begin_nested():
            session.add(row)
    except IntegrityError:
        found = await find()
        if found is None:
            raise
        return found
    return row
