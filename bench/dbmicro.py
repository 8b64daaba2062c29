"""Client-side cost of one database operation, by layer: raw asyncpg vs SQLAlchemy Core vs ORM.

    CHATBOTS_DATABASE_URL=postgresql+asyncpg://... python -m bench.dbmicro [--n 2000] [--json]

Runs each operation ``n`` times, one after another, on the app's own engine settings
(``app.db.make_engine`` with the settings' pool sizes: no pre-ping), and prints wall time and
this process's CPU time per operation (µs). The CPU column is what one service worker pays per
statement; multiply by the statements of a turn (bench/run.py's SQL trace) to see what bounds a
worker's throughput.
Needs a migrated database with at least one chatbot (bench/run.py seeds one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def _time(n: int, op: Callable[[], Awaitable[Any]]) -> dict[str, float]:
    for _ in range(min(50, n)):  # warm caches (prepared statements, compiled SQL)
        await op()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        await op()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"wall_us": round(wall / n * 1e6, 1), "cpu_us": round(cpu / n * 1e6, 1)}


async def measure(n: int) -> list[dict[str, Any]]:
    import asyncpg
    from sqlalchemy import select, text
    from sqlalchemy.engine import make_url

    from app.config import Settings
    from app.db import make_engine, make_sessionmaker
    from app.models import Chatbot

    settings = Settings()
    pool = {"pool_size": settings.database_pool_size, "max_overflow": settings.database_max_overflow}
    engine = make_engine(settings.database_url, **pool)
    pre_ping = getattr(engine.pool, "_pre_ping", None)  # as the app configures it
    # The same engine with and without pre-ping, for comparison.
    ping = make_engine(settings.database_url, **pool)
    ping.pool._pre_ping = True
    no_ping = make_engine(settings.database_url, **pool)
    no_ping.pool._pre_ping = False
    sessionmaker = make_sessionmaker(engine)
    url = make_url(settings.database_url)
    raw = await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, password=url.password,
        database=url.database,
    )  # fmt: skip
    results: list[dict[str, Any]] = []
    try:
        public_id = await raw.fetchval("SELECT public_id FROM chatbot LIMIT 1")
        if public_id is None:
            raise SystemExit("no chatbot in the database: seed one first")
        sql = "SELECT * FROM chatbot WHERE public_id = $1"
        stmt = select(Chatbot).where(Chatbot.public_id == public_id)

        async def raw_fetchrow() -> None:
            await raw.fetchrow(sql, public_id)

        async def raw_txn() -> None:
            async with raw.transaction():
                await raw.fetchrow(sql, public_id)

        async with engine.connect() as conn:

            async def core_execute() -> None:
                (await conn.execute(select(Chatbot.__table__).where(
                    Chatbot.__table__.c.public_id == public_id))).first()  # fmt: skip

            async def core_text() -> None:
                (await conn.execute(text("SELECT * FROM chatbot WHERE public_id = :p"),
                                    {"p": public_id})).first()  # fmt: skip

            results.append({"op": "raw asyncpg fetchrow (prepared)", **await _time(n, raw_fetchrow)})
            results.append({"op": "raw asyncpg BEGIN + fetchrow + COMMIT", **await _time(n, raw_txn)})
            results.append({"op": "SQLAlchemy Core select, open connection", **await _time(n, core_execute)})
            results.append({"op": "SQLAlchemy text(), open connection", **await _time(n, core_text)})
            await conn.rollback()

        async with sessionmaker() as session:

            async def orm_scalar() -> None:
                await session.scalar(stmt)

            results.append({"op": "ORM session.scalar(select(Chatbot)), open session",
                            **await _time(n, orm_scalar)})  # fmt: skip
            await session.rollback()

        async def orm_txn() -> None:
            async with sessionmaker() as s:
                await s.scalar(stmt)
                await s.commit()

        async def checkout(eng: Any) -> None:
            async with eng.connect() as conn:
                await conn.execute(text("SELECT 1"))
                await conn.commit()

        results.append({"op": "ORM new session + scalar + commit (pool checkout, "
                              f"{'pre-ping, ' if pre_ping else ''}BEGIN, COMMIT; the app's engine)",
                        **await _time(n, orm_txn)})  # fmt: skip
        results.append({"op": "pool checkout + SELECT 1 + commit, pre_ping on",
                        **await _time(n, lambda: checkout(ping))})  # fmt: skip
        results.append({"op": "pool checkout + SELECT 1 + commit, pre_ping off",
                        **await _time(n, lambda: checkout(no_ping))})  # fmt: skip
    finally:
        await raw.close()
        await engine.dispose()
        await ping.dispose()
        await no_ping.dispose()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="iterations per operation")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # as uvicorn runs the service
    except ImportError:
        pass
    results = asyncio.run(measure(args.n))
    if args.json:
        print(json.dumps(results))
    else:
        for r in results:
            print(f"{r['cpu_us']:8.1f} µs CPU {r['wall_us']:8.1f} µs wall  {r['op']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
