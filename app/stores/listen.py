"""PostgreSQL ``LISTEN``: one connection per channel per process, opened when first needed and
again after a loss, whose notifications call back into the process.

Two channels: ``SESSION_RELEASED_CHANNEL`` wakes the turns of this process that wait for a
session another process holds (``SessionListener``); ``chatbots_delivery_due``
(``app.stores.trigger``) wakes the delivery worker when a trigger commits.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg

from app.db import DB_GONE

log = logging.getLogger(__name__)
SESSION_RELEASED_CHANNEL = "chatbots_session_released"


class Listener:
    """``LISTEN channel`` on a connection of its own; ``on_notify`` gets each payload."""

    def __init__(self, dsn: str, channel: str, on_notify: Callable[[str], None], connect: Any = asyncpg.connect) -> None:
        self._dsn = dsn
        self._channel = channel
        self._on_notify = on_notify
        self._connect = connect
        self._connection: asyncpg.Connection | None = None
        self._opening = asyncio.Lock()

    async def listening(self) -> bool:
        """Open the connection if it is not (first use, or lost); False while it cannot be."""
        async with self._opening:
            if self._connection is not None and not self._connection.is_closed():
                return True
            try:
                self._connection = await self._connect(self._dsn)
                await self._connection.add_listener(self._channel, self._notified)
            except DB_GONE as exc:
                log.warning("cannot listen on %s: %s", self._channel, type(exc).__name__)
                self._connection = None
                return False
            return True

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self._on_notify(payload)

    async def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
            self._connection = None


class SessionListener:
    """Wakes the turns of this process that wait for a session another process holds.

    A notification lost with a dropped connection is covered by ``MAX_WAIT_SECONDS``: a waiting
    turn looks again at least that often."""

    MAX_WAIT_SECONDS = 2.0

    def __init__(self, dsn: str, connect: Any = asyncpg.connect) -> None:
        self._listener = Listener(dsn, SESSION_RELEASED_CHANNEL, self._released, connect)
        self._watchers: dict[int, list[asyncio.Event]] = {}

    def _released(self, payload: str) -> None:
        for event in self._watchers.get(int(payload), ()):
            event.set()

    @contextlib.asynccontextmanager
    async def watch(self, session_id: int) -> AsyncIterator["_Released"]:
        await self._listener.listening()
        released = _Released(self.MAX_WAIT_SECONDS)
        self._watchers.setdefault(session_id, []).append(released.event)
        try:
            yield released
        finally:
            watchers = self._watchers[session_id]
            watchers.remove(released.event)
            if not watchers:
                del self._watchers[session_id]

    async def close(self) -> None:
        await self._listener.close()


class _Released:
    def __init__(self, max_wait: float) -> None:
        self.event = asyncio.Event()
        self._max_wait = max_wait

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), min(timeout, self._max_wait))
        self.event.clear()
