"""Engine, sessions and the few dialect differences between PostgreSQL and SQLite."""

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import Depends, Request
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC)


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


# JSON columns (state, metadata, configs, history aggregates) through orjson, not stdlib json.
_JSON = {"json_serializer": _json_dumps, "json_deserializer": orjson.loads}


def make_engine(url: str, pool_size: int = 20, max_overflow: int = 20) -> AsyncEngine:
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


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One request, one database session: committed on success, rolled back on error."""
    async with request.app.state.sessionmaker() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


SessionDep = Annotated[AsyncSession, Depends(get_session)]


def is_postgresql(session: AsyncSession) -> bool:
    return session.bind.dialect.name == "postgresql"


async def driver_connection(session: AsyncSession) -> Any:
    """The session's asyncpg connection (PostgreSQL only), for the hot path's plain SQL.

    Statements on it are outside SQLAlchemy's transaction: run them in the driver's own
    ``conn.transaction()``, and ``commit()`` the session afterwards to give the connection back.
    """
    connection = await session.connection()
    return (await connection.get_raw_connection()).driver_connection


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
