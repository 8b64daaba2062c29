"""Finding, creating and claiming sessions (SPEC §3.2 step 5).

Messages of one session are processed one at a time, in arrival order. A turn holds the
session's lease (``lease_until``), claimed with a conditional ``UPDATE ... RETURNING`` that
also finds the session: on the common path one statement both resolves the session and takes
the lease. Across processes the lease is what serialises turns (a crashed holder's lease
expires); within a process, turns that find the session busy queue on an ``asyncio.Lock`` (FIFO,
no polling) with no transaction open while they wait.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import insert_or_get, utcnow
from app.errors import BadRequest, NotFound, ServiceUnavailable
from app.models import ChatSession, SessionStatus

SESSION_NOT_FOUND = "Session not found."
SESSION_ENDED = "This session has ended. Omit `session` to start a new one."
LEASE_POLL_SECONDS = 0.05
EXTERNAL_ID_LENGTH = 36


@dataclass(frozen=True)
class SessionKey:
    """Whose session: a session belongs to one chatbot (head), channel and participant."""

    team_id: int
    chatbot_id: int
    channel_id: int
    participant_id: int
    platform: str

    def params(self, external_id: str | None = None) -> dict[str, Any]:
        """Bind values for the owner conditions (``_OWNER``) of the statements below."""
        params: dict[str, Any] = {
            "p_team_id": self.team_id,
            "p_chatbot_id": self.chatbot_id,
            "p_channel_id": self.channel_id,
            "p_participant_id": self.participant_id,
        }
        if external_id is not None:
            params["p_external_id"] = external_id
        return params


class Lease:
    """A held turn lease. ``release_with(values)`` folds the release into the caller's last
    write of the session row."""

    def __init__(self, chat: ChatSession) -> None:
        self.chat = chat
        self.held = True

    def release_with(self, values: dict[str, Any]) -> dict[str, Any]:
        self.held = False
        return {**values, "lease_until": None}

    def release_orm(self) -> None:
        """Release through the ORM object (paths that write the session through the ORM)."""
        self.chat.lease_until = None
        self.held = False


# A session belongs to one team, chatbot (head), channel and participant. Statements are built
# once (see conversation.py): finding the open or a named session, and claiming either or one
# by id.
_OWNER = (
    ChatSession.team_id == bindparam("p_team_id"),
    ChatSession.chatbot_id == bindparam("p_chatbot_id"),
    ChatSession.channel_id == bindparam("p_channel_id"),
    ChatSession.participant_id == bindparam("p_participant_id"),
)
_NAMED = ChatSession.external_id == bindparam("p_external_id")
_FIND_OPEN = select(ChatSession).where(*_OWNER, ChatSession.ended_at.is_(None))
_FIND_NAMED = select(ChatSession).where(*_OWNER, _NAMED)


def session_id_can_exist(external_id: str | None) -> bool:
    """False for a named session that cannot exist (too long, NUL): no query needed."""
    return external_id is None or (
        len(external_id) <= EXTERNAL_ID_LENGTH and "\x00" not in external_id
    )


def end_session(chat: ChatSession, status: SessionStatus = SessionStatus.pending_review) -> None:
    chat.status = status
    chat.ended_at = utcnow()


async def open_session(session: AsyncSession, key: SessionKey, **values: Any) -> ChatSession:
    """The participant's open session with this chatbot on this channel, created if none (at
    most one: a partial unique index, so concurrent first messages share one)."""

    async def find() -> ChatSession | None:
        return await session.scalar(_FIND_OPEN, key.params())

    return await insert_or_get(
        session,
        find,
        lambda: ChatSession(
            team_id=key.team_id,
            chatbot_id=key.chatbot_id,
            channel_id=key.channel_id,
            participant_id=key.participant_id,
            platform=key.platform,
            status=SessionStatus.setup,
            **values,
        ),
    )


def _claim_statement(*criteria: Any) -> Any:
    return (
        update(ChatSession)
        .where(
            *criteria,
            ChatSession.ended_at.is_(None),
            or_(ChatSession.lease_until.is_(None), ChatSession.lease_until < bindparam("p_now")),
        )
        .values(lease_until=bindparam("p_lease_until"))
        .returning(ChatSession)
    )


_CLAIM_OPEN = _claim_statement(*_OWNER)
_CLAIM_NAMED = _claim_statement(*_OWNER, _NAMED)
_CLAIM_BY_ID = _claim_statement(ChatSession.id == bindparam("p_id"))


async def _claim(
    session: AsyncSession, statement: Any, params: dict[str, Any], seconds: float
) -> ChatSession | None:
    now = utcnow()
    params = {**params, "p_now": now, "p_lease_until": now + timedelta(seconds=seconds)}
    return (
        await session.scalars(statement, params, execution_options={"populate_existing": True})
    ).first()


async def _find_unclaimable(
    session: AsyncSession, key: SessionKey, external_id: str | None, seconds: float
) -> tuple[ChatSession, bool]:
    """After a failed claim: the session (busy, or new and claimed), or the 404/400."""
    if external_id is not None:
        chat = await session.scalar(_FIND_NAMED, key.params(external_id))
        if chat is None:
            raise NotFound(SESSION_NOT_FOUND)
        if chat.is_ended:
            raise BadRequest(SESSION_ENDED)
        return chat, False
    lease_until = utcnow() + timedelta(seconds=seconds)
    chat = await open_session(session, key, lease_until=lease_until)
    return chat, chat.lease_until == lease_until  # created by us, so claimed by us


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


@contextlib.asynccontextmanager
async def session_turn(
    session: AsyncSession, key: SessionKey, external_id: str | None, seconds: float
) -> AsyncIterator[Lease]:
    """Resolve the session and hold its turn lease for the block.

    ``external_id`` names the session (it must be this chatbot's, channel's and participant's,
    else 404); without it the open session is used or created. The lease is claimed inside the
    caller's open transaction, which commits it with its first writes; it is released on exit
    unless the caller folded the release into its last write (``Lease.release_with``).
    """
    if not session_id_can_exist(external_id):
        raise NotFound(SESSION_NOT_FOUND)  # cannot exist: don't ask the database
    claim = _CLAIM_OPEN if external_id is None else _CLAIM_NAMED
    chat = await _claim(session, claim, key.params(external_id), seconds)
    claimed = chat is not None
    if chat is None:
        chat, claimed = await _find_unclaimable(session, key, external_id, seconds)
    if claimed and session_is_queued(chat.id):
        # A turn of this process is queued for this session: go behind it, not ahead.
        await session.execute(
            update(ChatSession).where(ChatSession.id == chat.id).values(lease_until=None)
        )
        claimed = False
    if not claimed:
        await session.commit()  # never wait inside a transaction

    async with local_turn(chat.id):
        current = chat if claimed else await _wait_for_lease(session, chat.id, seconds)
        if current is not None:
            lease = Lease(current)
            try:
                yield lease
            finally:
                await _release_if_held(session, lease)
            return
        if external_id is not None:
            raise BadRequest(SESSION_ENDED)
    # The session ended while we queued (a /reset): the turn goes to the new open session.
    async with session_turn(session, key, None, seconds) as lease:
        yield lease


async def _release_if_held(session: AsyncSession, lease: Lease) -> None:
    if not lease.held:
        return
    await session.rollback()
    with contextlib.suppress(Exception):  # else the lease simply expires
        await session.execute(
            update(ChatSession).where(ChatSession.id == lease.chat.id).values(lease_until=None)
        )
        await session.commit()


async def _wait_for_lease(
    session: AsyncSession, session_id: int, seconds: float
) -> ChatSession | None:
    """Claim the lease once its holder lets go; None if the session ended meanwhile."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        chat = await _claim(session, _CLAIM_BY_ID, {"p_id": session_id}, seconds)
        if chat is not None:
            return chat
        ended = await session.scalar(
            select(ChatSession.ended_at).where(ChatSession.id == session_id)
        )
        # Commit, not roll back: nothing was written, and a rollback would expire the
        # caller's loaded objects.
        await session.commit()
        if ended is not None:
            return None
        if asyncio.get_running_loop().time() > deadline:
            raise ServiceUnavailable("Another message in this session is still being processed.")
        await asyncio.sleep(LEASE_POLL_SECONDS)
