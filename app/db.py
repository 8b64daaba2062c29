"""Engine, sessions and the few dialect differences between PostgreSQL and SQLite."""

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import asyncpg
import orjson
from fastapi import Depends, Request
from sqlalchemy import event, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

T = TypeVar("T")
DRIVER_POOL = "driver_pool"  # AsyncSession.info key


def utcnow() -> datetime:
    return datetime.now(UTC)


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


# JSON columns (state, metadata, configs, history aggregates) through orjson, not stdlib json.
_JSON = {"json_serializer": _json_dumps, "json_deserializer": orjson.loads}


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


def _configure_sqlite(engine: AsyncEngine) -> None:
    """WAL, foreign keys, and BEGIN IMMEDIATE.

    SQLite's deferred transactions fail at once with "database is locked" when a reader upgrades
    to a writer while another writer is active; taking the write lock at BEGIN makes concurrent
    transactions queue on the busy timeout instead. Transactions here are short (never held
    across an LLM call), so serialising them is cheap.
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
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_sessionmaker(
    engine: AsyncEngine, driver_pool: asyncpg.Pool | None = None
) -> async_sessionmaker[AsyncSession]:
    """Sessions carry the driver pool (PostgreSQL) in ``info`` for the hot path's plain SQL."""
    return async_sessionmaker(engine, expire_on_commit=False, info={DRIVER_POOL: driver_pool})


async def make_driver_pool(url: str, size: int) -> asyncpg.Pool | None:
    """PostgreSQL only: a plain asyncpg pool for the hot path (services/fast_turn.py), which
    runs its few statements on the driver without SQLAlchemy's per-statement and per-session
    cost. Everything else uses the engine's pool."""
    if not url.startswith("postgresql"):
        return None
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
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
    RESET ALL`` on every release: a round trip per checkout, three per turn. The hot path sets
    no session state (no advisory locks, cursors, LISTEN or SET); an open transaction is still
    rolled back by asyncpg before this hook runs."""


async def _init_driver_connection(connection: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await connection.set_type_codec(
            name, schema="pg_catalog", encoder=_json_text, decoder=orjson.loads
        )


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else _json_dumps(value)


def has_driver(session: AsyncSession) -> bool:
    return session.info.get(DRIVER_POOL) is not None


@asynccontextmanager
async def driver(session: AsyncSession) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the driver pool (PostgreSQL), outside any SQLAlchemy transaction:
    statements on it autocommit unless run in ``conn.transaction()``."""
    async with session.info[DRIVER_POOL].acquire() as connection:
        yield connection


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
