"""The resources every process kind shares, built in one place: the SQLAlchemy engine and
sessionmaker, the turn's store (on PostgreSQL over its own asyncpg pool, with the listener
that wakes turns waiting for another process's session), the HTTP client and the LLM client.

The API's lifespan opens one per worker process; so will the delivery worker and any command
that runs turns. Recovery from a lost database connection lives with the database code, not
in an HTTP handler: SQLAlchemy's pool invalidates itself on a disconnect, and the PostgreSQL
store expires its pool's connections (``PostgresStore._connection``), so a process that never
answers HTTP recovers the same way.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.auth.cache import CredentialCache
from app.config import Settings
from app.db import driver_dsn, engine_for, make_driver_pool, make_sessionmaker
from app.llm import LlmClient
from app.llm.http import make_http_client
from app.stores.base import TurnStore
from app.stores.listen import SessionListener
from app.stores.postgres_store import PostgresStore
from app.stores.sqlalchemy_store import SqlAlchemyStore


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    store: TurnStore
    driver_pool: asyncpg.Pool | None
    http_client: aiohttp.ClientSession
    llm: LlmClient
    # Set when this process added deliveries: its delivery worker looks at once (on PostgreSQL
    # every worker is also woken by NOTIFY; elsewhere other processes' workers poll).
    deliveries_due: asyncio.Event = field(default_factory=asyncio.Event)
    # Recent credential lookups (app.auth.cache): a steady client authenticates without a
    # round trip; staleness bounded by CHATBOTS_AUTH_CACHE_SECONDS.
    credentials: CredentialCache = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "credentials", CredentialCache(self.settings.auth_cache_seconds))

    def deliveries_added(self) -> None:
        """Wake this process's delivery worker, unless the trigger's NOTIFY does (PostgreSQL):
        one wake-up, one claim."""
        if self.driver_pool is None:
            self.deliveries_due.set()


@asynccontextmanager
async def open_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """Build the resources for one process; everything is closed on exit."""
    engine = engine_for(settings)
    driver_pool = await make_driver_pool(settings.database_url, settings.database_pool_size)
    listener: SessionListener | None = None
    store: TurnStore
    if driver_pool is not None:
        listener = SessionListener(driver_dsn(settings.database_url), asyncpg.connect)
        store = PostgresStore(driver_pool, listener)
    else:
        store = SqlAlchemyStore(engine)
    try:
        async with make_http_client() as http_client:
            yield Runtime(
                settings=settings,
                engine=engine,
                sessionmaker=make_sessionmaker(engine),
                store=store,
                driver_pool=driver_pool,
                http_client=http_client,
                llm=LlmClient(
                    http_client,
                    timeout=settings.llm_timeout_seconds,
                    max_retries=settings.llm_max_retries,
                    total_timeout=settings.llm_total_timeout_seconds,
                ),
            )
    finally:
        if listener is not None:
            await listener.close()
        if driver_pool is not None:
            await driver_pool.close()
        await engine.dispose()
