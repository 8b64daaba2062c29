"""One turn at a time per session, in arrival order (SPEC §3.2).

A turn holds its session's lease (``lease_until``, taken by the store's claim); a crashed
holder's lease expires. A turn that finds its session busy takes a ticket (a row, so it counts
in every process): the lowest live ticket claims next, and no newcomer claims past a ticket.
Within a process only its lowest ticket asks the database; the others wait here, on an event,
with nothing held open (``app.services.turn``).
"""

import asyncio
import bisect
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


_waiting: dict[int, list[tuple[int, asyncio.Event]]] = {}


@contextlib.asynccontextmanager
async def local_place(session_id: int, ticket: int) -> AsyncIterator[None]:
    """This process's place among its turns waiting for the session: the lowest ticket goes
    first (the others would only find it busy), and keeps its place until it leaves."""
    entry = (ticket, asyncio.Event())
    queue = _waiting.setdefault(session_id, [])
    bisect.insort(queue, entry, key=lambda e: e[0])
    try:
        if queue[0] is not entry:
            await entry[1].wait()
        yield
    finally:
        queue.remove(entry)
        if queue:
            queue[0][1].set()
        else:
            del _waiting[session_id]
