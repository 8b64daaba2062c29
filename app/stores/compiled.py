"""SQLAlchemy Core statements compiled once for the asyncpg dialect and run on the driver.

SQLAlchemy spends ~200 µs of CPU per executed statement (building the execution context,
processing rows) against ~60 µs for asyncpg alone (bench/RESULTS.md), and a turn's few
statements were most of a worker's CPU. Compiling the Core statement once keeps the schema in
one place (the models' tables and enums) and leaves only the driver's cost per execution:
the SQL string, the order of its ``$n`` parameters, their bind processors (datetimes, JSON)
and the values bound at build time (enum members, literals) are all worked out here, once.
"""

from collections.abc import Callable, Mapping
from typing import Any

import asyncpg
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg

from app.db import json_dumps

_DIALECT = PGDialect_asyncpg(json_serializer=json_dumps)


class CompiledStatement:
    def __init__(self, statement: Any) -> None:
        compiled = statement.compile(dialect=_DIALECT)
        self.sql: str = compiled.string
        processors = compiled._bind_processors  # noqa: SLF001 - the dialect's own bind processing
        required = {name for name, bind in compiled.binds.items() if bind.required}
        # Values bound at build time (enum members, literals) are processed here, once.
        self._binds: list[tuple[str, Callable[[Any], Any] | None, bool, Any]] = []
        for name in compiled.positiontup or ():
            process = processors.get(name)
            if name in required:
                self._binds.append((name, process, True, None))
            else:
                value = compiled.binds[name].value
                fixed = process(value) if process is not None and value is not None else value
                self._binds.append((name, None, False, fixed))

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        values = []
        for name, process, required, fixed in self._binds:
            if not required:
                values.append(fixed)
                continue
            value = params[name]
            values.append(process(value) if process is not None and value is not None else value)
        return values

    async def fetch(self, conn: asyncpg.Connection, params: Mapping[str, Any]) -> list[Any]:
        return await conn.fetch(self.sql, *self.args(params))

    async def fetchrow(self, conn: asyncpg.Connection, params: Mapping[str, Any]) -> Any:
        return await conn.fetchrow(self.sql, *self.args(params))

    async def fetchval(self, conn: asyncpg.Connection, params: Mapping[str, Any]) -> Any:
        return await conn.fetchval(self.sql, *self.args(params))

    async def execute(self, conn: asyncpg.Connection, params: Mapping[str, Any]) -> None:
        await conn.execute(self.sql, *self.args(params))
