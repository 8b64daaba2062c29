"""The PostgreSQL store: Core statements compiled once for asyncpg (``compiled.py``), run on a
plain asyncpg pool in autocommit.

Each write is one statement, so all or nothing without an explicit transaction, and several
writes fold into one with data-modifying CTEs: a claim takes the lease, creates the session
(with the participant and its data row on first contact) when there is none, stores the human
message and reads the history and participant data in one round trip; ``save`` stores the
reply and writes the session in another. Releasing a lease notifies
``SESSION_RELEASED_CHANNEL``: turns of other processes waiting for that session wake at once
(``SessionListener``) instead of polling. A connection goes back to the pool at the end of
every method. A lost connection expires the pool's connections (the next use reconnects) and
answers ``ServiceUnavailable``.
"""

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import (
    Boolean,
    Integer,
    String,
    Text,
    and_,
    bindparam,
    case,
    cast,
    column,
    exists,
    func,
    insert,
    literal,
    literal_column,
    not_,
    select,
    union_all,
)
from sqlalchemy.dialects.postgresql import JSONB, aggregate_order_by
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app.db import DB_GONE
from app.errors import ServiceUnavailable
from app.models import MessageRole, SessionStatus
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
from app.stores.compiled import CompiledStatement
from app.stores.listen import SESSION_RELEASED_CHANNEL, SessionListener

log = logging.getLogger(__name__)
S, M = st.SESSION, st.MESSAGE


def _json(value: Any) -> Any:
    return bindparam(None, value, type_=JSONB)


def _notify() -> Any:
    return func.pg_notify(SESSION_RELEASED_CHANNEL, cast(S.c.id, Text))


def _new_session(participant_id: Any) -> Any:
    """A SELECT of one new session's column values (status ``setup``, lease taken)."""
    values = {
        "external_id": bindparam("new_external_id", type_=String),
        "team_id": bindparam("p_team_id", type_=Integer),
        "chatbot_id": bindparam("p_chatbot_id", type_=Integer),
        "channel_id": bindparam("p_channel_id", type_=Integer),
        "participant_id": participant_id,
        "platform": bindparam("p_platform", type_=String),
        "status": literal(SessionStatus.setup, String),
        "state": _json({}),
        "versions_seen": _json([]),
        "created_at": st.NOW,
        "last_activity_at": st.NOW,
        "lease_until": st.LEASE_UNTIL,
    }
    return list(values), select(*values.values())


def _create_session(participant_id: Any, *where: Any) -> Any:
    names, values = _new_session(participant_id)
    return (
        pg_insert(S)
        .from_select(names, values.where(*where))
        .on_conflict_do_nothing()  # a concurrent first message won: its session is the one
        .returning(*st.SESSION_COLUMNS)
    )


def _create_participant_data(participant_id: Any, *where: Any) -> Any:
    pd = st.PARTICIPANT_DATA
    return pg_insert(pd).from_select(
        ["participant_id", "chatbot_id", "data", "system_metadata"],
        select(participant_id, bindparam("p_chatbot_id", type_=Integer), _json({}), _json({})).where(
            *where
        ),
    ).on_conflict_do_nothing()


_PARTICIPANT = bindparam("p_participant_id", type_=Integer)


def _claimed_by_id() -> tuple[Any, list[Any]]:
    """The session a waiting turn queued for, claimed by id; the claim uses its ticket up."""
    session = st.CLAIM_BY_ID.cte("claimed")
    return session, [st.DROP_TICKET.where(exists(select(session.c.id))).cte("served")]


def _claimed_or_created() -> tuple[Any, list[Any]]:
    """The named or the open session of a known participant; when there is no open one (and
    none is named), a new one, with the participant's data row for this chatbot if missing."""
    claimed = st.CLAIM_OWNER.cte("claimed")
    none_claimed = ~exists(select(claimed.c.id))
    unnamed = bindparam("p_external_id", type_=String).is_(None)
    created = _create_session(_PARTICIPANT, unnamed, none_claimed).cte("created")
    data = _create_participant_data(
        _PARTICIPANT, exists(select(created.c.id)), ~st.PARTICIPANT_DATA_OF.exists()
    ).cte("data")
    return union_all(select(claimed), select(created)).cte("session"), [data]


def _first_contact() -> tuple[Any, list[Any]]:
    """A new participant, its data row and its session (nothing if a concurrent first message
    created the participant: the caller starts again with it)."""
    new = (
        pg_insert(st.PARTICIPANT)
        .values(
            team_id=bindparam("p_team_id", type_=Integer),
            platform=bindparam("p_platform", type_=String),
            identifier=bindparam("identifier", type_=String),
            user_id=bindparam("user_id", type_=Integer),
            name="",
            public_id=bindparam("new_participant_public_id"),
            created_at=st.NOW,
        )
        .on_conflict_do_nothing()
        .returning(st.PARTICIPANT.c.id)
        .cte("participant")
    )
    participant, created = select(new.c.id).scalar_subquery(), exists(select(new.c.id))
    session = _create_session(participant, created).cte("session")
    return session, [_create_participant_data(participant, created).cte("data")]


def _claim_statement(found: tuple[Any, list[Any]], new_participant: bool = False) -> CompiledStatement:
    """One statement: the session ``found`` claims (or creates), the human message stored, the
    history read (a CTE's snapshot: the new message is not in it) and the participant's data."""
    session, ctes = found
    human = insert(M).from_select(
        ["session_id", "role", "content", "metadata", "version_label", "hidden", "created_at"],
        select(
            session.c.id,
            literal(MessageRole.human, String),
            bindparam("human", type_=Text),
            _json({}),
            literal(None, String),
            literal(False),
            st.NOW,
        ).where(
            bindparam("human", type_=Text).is_not(None),
            not_(and_(bindparam("consent", type_=Boolean), st.awaits_consent(session.c.status))),
        ),
    ).cte("human")
    recent = (
        select(M.c.id, M.c.role, M.c.content, M.c.created_at)
        .where(M.c.session_id == session.c.id, M.c.hidden.is_(False))
        .order_by(M.c.created_at.desc(), M.c.id.desc())
        .limit(bindparam("history_limit", type_=Integer))
        .correlate(session)
        .subquery("recent")
    )
    history = select(
        func.coalesce(
            func.json_agg(
                aggregate_order_by(
                    func.json_build_array(recent.c.id, recent.c.role, recent.c.content),
                    recent.c.created_at.desc(),
                    recent.c.id.desc(),
                )
            ),
            literal_column("'[]'::json"),
        )
    ).scalar_subquery()
    data = _json({}) if new_participant else st.PARTICIPANT_DATA_OF.scalar_subquery()
    statement = select(
        *(session.c[c.name] for c in st.SESSION_COLUMNS),
        history.label("history"),
        data.label("participant_data"),
    ).add_cte(human, *ctes)
    return CompiledStatement(statement)


_MESSAGES = func.jsonb_to_recordset(bindparam("messages", type_=JSONB)).table_valued(
    column("role", String),
    column("content", Text),
    column("metadata", JSONB),
    column("version_label", String),
    column("hidden", Boolean),
).render_derived(with_types=True)


def _save_statement() -> CompiledStatement:
    stored = insert(M).from_select(
        ["session_id", "role", "content", "metadata", "version_label", "hidden", "created_at"],
        select(
            st.SESSION_ID,
            _MESSAGES.c.role,
            _MESSAGES.c.content,
            _MESSAGES.c.metadata,
            _MESSAGES.c.version_label,
            _MESSAGES.c.hidden,
            st.NOW,
        ),
    ).cte("stored")
    # Notify only when the lease is given back: that is what waiting turns wait for.
    notify = case((bindparam("release", type_=Boolean), _notify()), else_=None)
    return CompiledStatement(st.UPDATE_SESSION.add_cte(stored).returning(notify))


def _reset_statement() -> CompiledStatement:
    """One statement: end the session (notifying its waiters) and open the next one. The insert
    reads the ended row first, so the old session is no longer open (in the partial unique
    index's sense) when the new one is checked against it."""
    ended = st.END_SESSION.returning(S.c.id, _notify()).cte("ended")
    return CompiledStatement(_create_session(_PARTICIPANT, exists(select(ended.c.id))))


class PostgresStore:
    def __init__(self, pool: asyncpg.Pool, listener: "SessionListener") -> None:
        self.pool = pool
        self.listener = listener

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        try:
            async with self.pool.acquire() as connection:
                yield connection
        except DB_GONE as exc:
            # The driver saw the database go: drop the pool's connections (each reconnects on
            # its next use), as SQLAlchemy's pool does on a disconnect.
            log.warning("database unavailable: %s", type(exc).__name__)
            await self.pool.expire_connections()
            raise ServiceUnavailable() from exc

    async def use_api_key(
        self, prefix: str, key_hash: str, now: datetime, not_since: datetime
    ) -> ApiKeyRecord | None:
        params = {"p_prefix": prefix, "p_key_hash": key_hash, "now": now, "not_since": not_since}
        async with self._connection() as conn:
            row = await _USE_KEY.fetchrow(conn, params)
        return None if row is None else ApiKeyRecord(*row)

    async def load_target(
        self, team_id: int, public_id: uuid.UUID, version: int | None, identifier: str
    ) -> TurnTarget | None:
        return await self._target(_TARGET, st.target_params(team_id, public_id, version, identifier), version)

    async def load_widget_target(
        self, team_id: int, public_id: uuid.UUID, version: int | None, channel_id: int,
        external_id: str | None,
    ) -> TurnTarget | None:
        params = st.widget_target_params(team_id, public_id, version, channel_id, external_id)
        return await self._target(_WIDGET_TARGET, params, version)

    async def _target(
        self, statement: CompiledStatement, params: dict[str, Any], version: int | None
    ) -> TurnTarget | None:
        async with self._connection() as conn:
            row = await statement.fetchrow(conn, params)
        return None if row is None else st.target_from_row(row, version or None)

    async def load_trigger_target(
        self, team_id: int, public_id: uuid.UUID, platform: str
    ) -> TriggerTarget | None:
        params = {"p_team_id": team_id, "public_id": public_id, "p_platform": platform}
        async with self._connection() as conn:
            row = await _TRIGGER_TARGET.fetchrow(conn, params)
        return None if row is None else TriggerTarget(*row)

    @contextlib.asynccontextmanager
    async def statements(self, *, transaction: bool = False, read_only: bool = False) -> AsyncIterator["_Executor"]:
        async with self._connection() as conn:
            if not transaction:
                yield _Executor(conn)
                return
            async with conn.transaction():
                yield _Executor(conn)

    async def create_api_channel(self, team_id: int) -> ApiChannel:
        async with self._connection() as conn:
            await _CREATE_API_CHANNEL.execute(conn, {"p_team_id": team_id})
            row = await _FIND_API_CHANNEL.fetchrow(conn, {"p_team_id": team_id})
        return ApiChannel(*row)

    async def claim(self, request: ClaimRequest) -> Claim | None:
        if request.session_id is not None:
            statement = _CLAIM_BY_ID
        elif request.participant_id is None:
            statement = _CLAIM_FIRST_CONTACT
        else:
            statement = _CLAIM_OWNER
        async with self._connection() as conn:
            row = await statement.fetchrow(conn, st.claim_params(request))
        if row is None:
            return None
        history = [StoredMessage(m[0], m[1], m[2]) for m in row["history"]]
        return st.claim_from_row(row, history, row["participant_data"], request.lease_until)

    async def take_ticket(self, session_id: int, now: datetime) -> int:
        async with self._connection() as conn:
            return await _TAKE_TICKET.fetchval(conn, {"session_id": session_id, "now": now})

    async def drop_ticket(self, ticket: int) -> None:
        async with self._connection() as conn:
            await _DROP_TICKET.execute(conn, {"ticket": ticket})

    async def find_session(
        self, key: SessionKey, participant_id: int | None, external_id: str | None
    ) -> SessionFound | None:
        if participant_id is None:
            return None
        async with self._connection() as conn:
            row = await _FIND_SESSION.fetchrow(conn, st.owner_params(key, participant_id, external_id))
        return None if row is None else SessionFound(row["id"], row["ended_at"] is not None)

    async def session_ended(self, session_id: int) -> bool:
        async with self._connection() as conn:
            row = await _SESSION_ENDED_AT.fetchrow(conn, {"session_id": session_id})
        return row is None or row["ended_at"] is not None

    def watch_releases(self, session_id: int) -> Any:
        return self.listener.watch(session_id)

    async def read_unsummarized(
        self, session_id: int, before_id: int, after_id: int, limit: int
    ) -> list[StoredMessage]:
        params = {"session_id": session_id, "before_id": before_id, "after_id": after_id,
                  "limit": limit}  # fmt: skip
        async with self._connection() as conn:
            return st.stored_messages(await _UNSUMMARIZED.fetch(conn, params))

    async def save(
        self, session_id: int, messages: Sequence[NewMessage], update: SessionUpdate, now: datetime
    ) -> None:
        params = {
            **st.update_params(session_id, update),
            "now": now,
            "messages": [
                {"role": m.role, "content": m.content, "metadata": m.metadata,
                 "version_label": m.version_label, "hidden": m.hidden}  # fmt: skip
                for m in messages
            ],
        }
        async with self._connection() as conn:
            await _SAVE.execute(conn, params)

    async def release(self, session_id: int, lease_until: datetime) -> None:
        async with self._connection() as conn:
            await _RELEASE.execute(conn, {"session_id": session_id, "held_until": lease_until})

    async def reset(self, session_id: int, request: ClaimRequest, ended_status: str) -> str:
        params = {**st.reset_params(request), "session_id": session_id, "status": ended_status}
        async with self._connection() as conn:
            row = await _RESET.fetchrow(conn, params)
        if row is None:  # cannot happen while the caller holds the lease of the open session
            raise RuntimeError("reset: the new session could not be created")
        return row["external_id"]


class _Executor:
    """``Executor`` on a driver connection: each statement compiled once, on first use (the
    statements are module constants, so an id stays its statement's for the process's life)."""

    dialect = "postgresql"
    _compiled: dict[int, CompiledStatement] = {}

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    def _statement(self, statement: Any) -> CompiledStatement:
        compiled = self._compiled.get(id(statement))
        if compiled is None:
            compiled = self._compiled[id(statement)] = CompiledStatement(statement)
        return compiled

    async def first(self, statement: Any, params: Mapping[str, Any]) -> Mapping[str, Any] | None:
        return await self._statement(statement).fetchrow(self.conn, params)

    async def all(self, statement: Any, params: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        return await self._statement(statement).fetch(self.conn, params)

    async def execute(self, statement: Any, params: Mapping[str, Any]) -> None:
        await self._statement(statement).execute(self.conn, params)


# The key's row as it was (the CTE's snapshot) and its use recorded, in one statement.
_USE_KEY = CompiledStatement(st.KEY_WITH_MEMBERSHIP.add_cte(st.RECORD_KEY_USE.cte("used")))
_TARGET = CompiledStatement(st.TARGET)
_WIDGET_TARGET = CompiledStatement(st.WIDGET_TARGET)
_TRIGGER_TARGET = CompiledStatement(trigger.TARGET)
_CREATE_API_CHANNEL = CompiledStatement(
    pg_insert(st.CHANNEL)
    .values(
        team_id=bindparam("p_team_id", type_=Integer),
        platform=literal(st.Platform.api, String),
        name="API",
        config=_json({}),
        external_id=func.gen_random_uuid(),
        enabled=True,
        deleted=False,
        created_at=func.now(),
    )
    .on_conflict_do_nothing()
)
_FIND_API_CHANNEL = CompiledStatement(st.FIND_API_CHANNEL)
_CLAIM_BY_ID = _claim_statement(_claimed_by_id())
_CLAIM_OWNER = _claim_statement(_claimed_or_created())
_CLAIM_FIRST_CONTACT = _claim_statement(_first_contact(), new_participant=True)
_FIND_SESSION = CompiledStatement(st.FIND_SESSION)
_TAKE_TICKET = CompiledStatement(st.TAKE_TICKET)
_DROP_TICKET = CompiledStatement(st.DROP_TICKET)
_SESSION_ENDED_AT = CompiledStatement(st.SESSION_ENDED_AT)
_UNSUMMARIZED = CompiledStatement(st.UNSUMMARIZED)
_SAVE = _save_statement()
_RELEASE = CompiledStatement(st.RELEASE.returning(_notify()))
_RESET = _reset_statement()
