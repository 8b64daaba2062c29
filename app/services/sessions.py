"""One turn at a time per session, in arrival order (SPEC §3.2), within this process.

A turn holds its session's lease (``lease_until``, taken by the store's claim): across processes
the lease is what serialises turns, and a crashed holder's lease expires. Within a process, turns
that find their session busy queue on an ``asyncio.Lock`` per session (FIFO, no polling, nothing
held open while they wait), and a claim skips the sessions this process has turns queued for, so
a newcomer never overtakes them (``app.services.turn``).
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator

SESSION_NOT_FOUND = "Session not found."
SESSION_ENDED = "This session has ended. Omit `session` to start a new one."
EXTERNAL_ID_LENGTH = 36


def session_id_can_exist(external_id: str | None) -> bool:
    """False for a named session that cannot exist (too long, NUL): no query needed."""
    return external_id is None or (
        len(external_id) <= EXTERNAL_ID_LENGTH and "\x00" not in external_id
    )


_local_queues: dict[int, tuple[asyncio.Lock, int]] = {}


def session_is_queued(session_id: int) -> bool:
    """Whether a turn of this process holds or waits for the session."""
    return session_id in _local_queues


def queued_sessions() -> list[int]:
    """The sessions a turn of this process holds or waits for."""
    return list(_local_queues)


@contextlib.asynccontextmanager
async def local_turn(session_id: int) -> AsyncIterator[None]:
    lock, users = _local_queues.get(session_id, (asyncio.Lock(), 0))
    _local_queues[session_id] = (lock, users + 1)
    try:
        async with lock:
            yield
    finally:
        lock, users = _local_queues[session_id]
        if users == 1:
            del _local_queues[session_id]
        else:
            _local_queues[session_id] = (lock, users - 1)
