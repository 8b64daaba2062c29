"""The SQLAlchemy store: the turn's reads and writes as short SQLAlchemy Core transactions, for
SQLite (the embedded default) and any other database SQLAlchemy speaks.

Every method is one transaction of its own, committed before it returns. On SQLite a
transaction that writes begins with ``BEGIN IMMEDIATE`` (it queues on the busy timeout instead
of failing when another writer is active) and one that only reads begins a deferred one, which
takes no write lock (``app.db``: the ``read_only`` execution option). Other processes' lease
releases are not signalled here: a turn waiting for one looks again every
``LEASE_POLL_SECONDS``.
"""

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db import READ_ONLY, utcnow
from app.models import Platform
from app.stores import statements as st
from app.stores import trigger
from app.stores.trigger import TriggerTarget
from app.stores.base import (
    ApiChannel,
    ApiKeyRecord,
    Claim,
    ClaimRequest,
    NewMessage,
    SessionFound,
    SessionKey,
    SessionUpdate,
    StoredMessage,
    TurnTarget,
)

LEASE_POLL_SECONDS = 0.05


class _Executor:
    """``Executor`` on a SQLAlchemy connection."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.dialect = conn.dialect.name

    async def first(self, statement: Any, params: Mapping[str, Any]) -> Mapping[str, Any] | None:
        return (await self.conn.execute(statement, dict(params))).mappings().first()

    async def all(self, statement: Any, params: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        return list((await self.conn.execute(statement, dict(params))).mappings())

    async def execute(self, statement: Any, params: Mapping[str, Any]) -> None:
        await self.conn.execute(statement, dict(params))


class SqlAlchemyStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._reader = engine.execution_options(**{READ_ONLY: True})

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with self._reader.connect() as conn:
            yield conn

    def _write(self) -> Any:
        return self.engine.begin()

    def _insert_ignoring_conflicts(self, conn: AsyncConnection, table: Any) -> Any:
        dialect = {"postgresql": postgresql, "sqlite": sqlite}[conn.dialect.name]
        return dialect.insert(table).on_conflict_do_nothing()

    async def use_api_key(
        self, prefix: str, key_hash: str, now: datetime, not_since: datetime
    ) -> ApiKeyRecord | None:
        async with self._read() as conn:
            row = (await conn.execute(st.KEY_WITH_MEMBERSHIP, {"p_prefix": prefix})).first()
        if row is None:
            return None
        key = ApiKeyRecord(*row)
        if key.last_used_at is None or key.last_used_at < not_since:  # due: write (if valid)
            params = {"p_prefix": prefix, "p_key_hash": key_hash, "now": now, "not_since": not_since}
            async with self._write() as conn:
                await conn.execute(st.RECORD_KEY_USE, params)
        return key

    async def load_target(
        self, team_id: int, public_id: uuid.UUID, version: int | None, identifier: str
    ) -> TurnTarget | None:
        return await self._target(st.TARGET, st.target_params(team_id, public_id, version, identifier), version)

    async def load_widget_target(
        self, team_id: int, public_id: uuid.UUID, version: int | None, channel_id: int,
        external_id: str | None,
    ) -> TurnTarget | None:
        params = st.widget_target_params(team_id, public_id, version, channel_id, external_id)
        return await self._target(st.WIDGET_TARGET, params, version)

    async def _target(self, statement: Any, params: dict[str, Any], version: int | None) -> TurnTarget | None:
        async with self._read() as conn:
            row = (await conn.execute(statement, params)).first()
        return None if row is None else st.target_from_row(row._mapping, version or None)

    async def load_trigger_target(
        self, team_id: int, public_id: uuid.UUID, platform: str
    ) -> TriggerTarget | None:
        params = {"p_team_id": team_id, "public_id": public_id, "p_platform": platform}
        async with self._read() as conn:
            row = (await conn.execute(trigger.TARGET, params)).first()
        return None if row is None else TriggerTarget(*row)

    @contextlib.asynccontextmanager
    async def statements(self, *, transaction: bool = False, read_only: bool = False) -> AsyncIterator[_Executor]:
        # Always a transaction here: SQLite's locks want one (``app.db``).
        async with (self._read() if read_only and not transaction else self._write()) as conn:
            yield _Executor(conn)

    async def create_api_channel(self, team_id: int) -> ApiChannel:
        async with self._write() as conn:
            await conn.execute(
                self._insert_ignoring_conflicts(conn, st.CHANNEL).values(
                    team_id=team_id, platform=Platform.api, name="API", config={},
                    external_id=uuid.uuid4(), enabled=True, deleted=False,
                    created_at=utcnow(),
                )  # fmt: skip
            )
            row = (await conn.execute(st.FIND_API_CHANNEL, {"p_team_id": team_id})).one()
        return ApiChannel(*row)

    async def claim(self, request: ClaimRequest) -> Claim | None:
        params = st.claim_params(request)
        async with self._write() as conn:
            row = await self._claim_or_create(conn, request, params)
            if row is None:
                return None
            session = row._mapping
            history = []
            if request.history_limit:
                history = st.stored_messages(await conn.execute(st.RECENT_HISTORY, {
                    "session_id": session["id"], "history_limit": request.history_limit}))  # fmt: skip
            data = await conn.scalar(st.PARTICIPANT_DATA_OF, params)
            if request.human is not None and st.human_is_stored(session["status"], request.consent):
                await conn.execute(
                    insert(st.MESSAGE),
                    st.message_values(session["id"], NewMessage("human", request.human), request.now),
                )
        return st.claim_from_row(session, history, data, request.lease_until)

    async def _claim_or_create(
        self, conn: AsyncConnection, request: ClaimRequest, params: dict[str, Any]
    ) -> Any:
        if request.session_id is not None:
            row = (await conn.execute(st.CLAIM_BY_ID, params)).first()
            if row is not None and request.ticket is not None:
                await conn.execute(st.DROP_TICKET, params)
            return row
        if request.participant_id is not None:
            row = (await conn.execute(st.CLAIM_OWNER, params)).first()
            if row is not None or request.external_id is not None:
                return row
        else:
            participant_id = await conn.scalar(
                self._insert_ignoring_conflicts(conn, st.PARTICIPANT)
                .values(
                    team_id=request.key.team_id, platform=request.key.platform,
                    identifier=request.identifier, user_id=request.user_id, name="",
                    public_id=uuid.uuid4(), created_at=request.now,
                )
                .returning(st.PARTICIPANT.c.id)
            )  # fmt: skip
            if participant_id is None:
                return None  # a concurrent first message created it: the caller starts again
            params["p_participant_id"] = participant_id
        row = (
            await conn.execute(
                self._insert_ignoring_conflicts(conn, st.SESSION)
                .values(st.new_session_values(params))
                .returning(*st.SESSION_COLUMNS)
            )
        ).first()
        if row is not None:  # the open session is busy otherwise (the partial unique index)
            await conn.execute(
                self._insert_ignoring_conflicts(conn, st.PARTICIPANT_DATA).values(
                    participant_id=params["p_participant_id"], chatbot_id=request.key.chatbot_id,
                    data={}, system_metadata={},
                )  # fmt: skip
            )
        return row

    async def take_ticket(self, session_id: int, now: datetime) -> int:
        async with self._write() as conn:
            return await conn.scalar(st.TAKE_TICKET, {"session_id": session_id, "now": now})

    async def drop_ticket(self, ticket: int) -> None:
        async with self._write() as conn:
            await conn.execute(st.DROP_TICKET, {"ticket": ticket})

    async def find_session(
        self, key: SessionKey, participant_id: int | None, external_id: str | None
    ) -> SessionFound | None:
        if participant_id is None:
            return None
        async with self._read() as conn:
            params = st.owner_params(key, participant_id, external_id)
            row = (await conn.execute(st.FIND_SESSION, params)).first()
        return None if row is None else SessionFound(row.id, row.ended_at is not None)

    async def session_ended(self, session_id: int) -> bool:
        async with self._read() as conn:
            row = (await conn.execute(st.SESSION_ENDED_AT, {"session_id": session_id})).first()
        return row is None or row.ended_at is not None

    @contextlib.asynccontextmanager
    async def watch_releases(self, session_id: int) -> AsyncIterator["PollForRelease"]:
        yield PollForRelease()

    async def read_unsummarized(
        self, session_id: int, before_id: int, after_id: int, limit: int
    ) -> list[StoredMessage]:
        params = {"session_id": session_id, "before_id": before_id, "after_id": after_id,
                  "limit": limit}  # fmt: skip
        async with self._read() as conn:
            return st.stored_messages(await conn.execute(st.UNSUMMARIZED, params))

    async def save(
        self, session_id: int, messages: Sequence[NewMessage], update: SessionUpdate, now: datetime
    ) -> None:
        async with self._write() as conn:
            if messages:
                await conn.execute(
                    insert(st.MESSAGE), [st.message_values(session_id, m, now) for m in messages]
                )
            await conn.execute(st.UPDATE_SESSION, st.update_params(session_id, update))

    async def release(self, session_id: int, lease_until: datetime) -> None:
        async with self._write() as conn:
            await conn.execute(st.RELEASE, {"session_id": session_id, "held_until": lease_until})

    async def reset(self, session_id: int, request: ClaimRequest, ended_status: str) -> str:
        params = st.reset_params(request)
        async with self._write() as conn:
            await conn.execute(
                st.END_SESSION, {"session_id": session_id, "status": ended_status, "now": request.now}
            )
            return await conn.scalar(
                insert(st.SESSION)
                .values(st.new_session_values(params))
                .returning(st.SESSION.c.external_id)
            )


class PollForRelease:
    """No notifications here: look again after a short sleep."""

    async def wait(self, timeout: float) -> None:
        await asyncio.sleep(min(timeout, LEASE_POLL_SECONDS))
