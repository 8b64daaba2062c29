"""Finding and creating sessions, and the per-session turn lease (SPEC §3.2 step 5).

Messages of one session are processed one at a time, in arrival order. Within a process an
``asyncio.Lock`` per session queues them (FIFO, no polling); across processes a lease column
(``lease_until``) claimed with a conditional UPDATE does, and expires if its holder crashed. No
transaction is held while waiting or while the LLM answers.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import insert_or_get, utcnow
from app.errors import BadRequest, NotFound, ServiceUnavailable
from app.models import Channel, Chatbot, ChatSession, Participant, SessionStatus

SESSION_NOT_FOUND = "Session not found."
LEASE_POLL_SECONDS = 0.05
EXTERNAL_ID_LENGTH = 36


async def resolve_session(
    session: AsyncSession,
    *,
    head: Chatbot,
    channel: Channel,
    participant: Participant,
    external_id: str | None,
) -> ChatSession:
    """The session named by ``external_id`` (it must belong to this chatbot, team, channel and
    participant: anything else is the same 404), else the participant's open session with this
    chatbot on this channel, else a new one."""
    if external_id is not None:
        if len(external_id) > EXTERNAL_ID_LENGTH or "\x00" in external_id:
            raise NotFound(SESSION_NOT_FOUND)  # cannot exist: don't ask the database
        chat = await session.scalar(
            select(ChatSession).where(
                ChatSession.external_id == external_id,
                ChatSession.team_id == head.team_id,
                ChatSession.chatbot_id == head.id,
                ChatSession.channel_id == channel.id,
                ChatSession.participant_id == participant.id,
            )
        )
        if chat is None:
            raise NotFound(SESSION_NOT_FOUND)
        if chat.is_ended:
            raise BadRequest("This session has ended. Omit `session` to start a new one.")
        return chat
    return await open_session(session, head=head, channel=channel, participant=participant)


async def open_session(
    session: AsyncSession, *, head: Chatbot, channel: Channel, participant: Participant
) -> ChatSession:
    async def find() -> ChatSession | None:
        return await session.scalar(
            select(ChatSession).where(
                ChatSession.chatbot_id == head.id,
                ChatSession.channel_id == channel.id,
                ChatSession.participant_id == participant.id,
                ChatSession.ended_at.is_(None),
            )
        )

    return await insert_or_get(
        session,
        find,
        lambda: ChatSession(
            team_id=head.team_id,
            chatbot_id=head.id,
            channel_id=channel.id,
            participant_id=participant.id,
            platform=channel.platform,
            status=SessionStatus.setup,
        ),
    )


def end_session(chat: ChatSession, status: SessionStatus = SessionStatus.pending_review) -> None:
    chat.status = status
    chat.ended_at = utcnow()
    chat.lease_until = None


_local_locks: dict[int, tuple[asyncio.Lock, int]] = {}


@contextlib.asynccontextmanager
async def _local_lock(session_id: int) -> AsyncIterator[None]:
    lock, users = _local_locks.get(session_id, (asyncio.Lock(), 0))
    _local_locks[session_id] = (lock, users + 1)
    try:
        async with lock:
            yield
    finally:
        lock, users = _local_locks[session_id]
        if users == 1:
            del _local_locks[session_id]
        else:
            _local_locks[session_id] = (lock, users - 1)


async def _try_claim_lease(session: AsyncSession, session_id: int, seconds: float) -> bool:
    now = utcnow()
    result = await session.execute(
        update(ChatSession)
        .where(
            ChatSession.id == session_id,
            or_(ChatSession.lease_until.is_(None), ChatSession.lease_until < now),
        )
        .values(lease_until=now + timedelta(seconds=seconds))
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


class Lease:
    """A held turn lease. ``release_with(chat)`` folds the release into the caller's last write."""

    def __init__(self) -> None:
        self.held = True

    def release_with(self, chat: ChatSession) -> None:
        chat.lease_until = None
        self.held = False


@contextlib.asynccontextmanager
async def turn_lease(session: AsyncSession, session_id: int, seconds: float) -> AsyncIterator[Lease]:
    """Hold the session's turn lease. On entry the lease is claimed inside an open transaction
    (the caller commits it along with its first writes); on exit it is released unless the
    caller already released it with its last write."""
    async with _local_lock(session_id):
        deadline = asyncio.get_running_loop().time() + seconds
        while not await _try_claim_lease(session, session_id, seconds):
            # Never wait inside a transaction. Commit (nothing was written) rather than roll
            # back: a rollback would expire the caller's loaded objects.
            await session.commit()
            if asyncio.get_running_loop().time() > deadline:
                raise ServiceUnavailable("Another message in this session is still being processed.")
            await asyncio.sleep(LEASE_POLL_SECONDS)
        lease = Lease()
        try:
            yield lease
        finally:
            if lease.held:
                await session.rollback()
                with contextlib.suppress(Exception):  # else the lease simply expires
                    await session.execute(
                        update(ChatSession)
                        .where(ChatSession.id == session_id)
                        .values(lease_until=None)
                    )
                    await session.commit()
