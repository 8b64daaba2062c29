"""The rows a trigger writes (SPEC §3.3 steps 6–9), in one transaction, on either store.

``TriggerWriter`` has one method per statement; ``app.services.trigger`` decides which to run.
Both stores hand it the same statements over their own connection (``store.statements``): compiled
once for asyncpg by ``PostgresStore``, executed by SQLAlchemy on SQLite. So the trigger's
writes exist once, whatever runs them.

Concurrent triggers for one participant are serialised by the participant row: the first
statement of the transaction upserts it (``ON CONFLICT DO UPDATE``, which locks the row on
PostgreSQL; SQLite's write lock serialises whole transactions anyway). The read-modify-write
merges of the participant's data and the session's state below are safe under that lock.
"""

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, String, and_, bindparam, case, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from app.models import Delivery, DeliveryStatus, Membership, Platform, SessionStatus, User
from app.stores import statements as st
from app.stores.base import Executor

D = Delivery.__table__
S, P, PD, CH = st.SESSION, st.PARTICIPANT, st.PARTICIPANT_DATA, st.CHANNEL
DELIVERY_DUE_CHANNEL = "chatbots_delivery_due"


@dataclass(frozen=True, slots=True)
class TriggerTarget:
    """A team's chatbot and its channel on one platform, read before the transaction."""

    head_id: int
    channel_id: int | None  # None: no channel on this platform
    channel_enabled: bool


@dataclass(frozen=True, slots=True)
class Replay:
    """The delivery an ``Idempotency-Key`` already made: its request and its answer."""

    request_hash: str | None
    delivery_id: uuid.UUID
    session_id: str
    platform: str
    created_at: datetime  # the key's first use: it expires from there (app.stores.idempotency)


@dataclass(frozen=True, slots=True)
class OpenSession:
    id: int
    external_id: str
    state: dict[str, Any]


@dataclass(frozen=True, slots=True)
class NewDelivery:
    team_id: int
    session_id: int
    channel_id: int
    platform: str
    recipient: str
    prompt_text: str | None
    message_text: str | None
    now: datetime
    idempotency_credential: str | None
    idempotency_key: str | None
    request_hash: str | None


_TEAM = bindparam("p_team_id", type_=Integer)
_PLATFORM = bindparam("p_platform", type_=String)
TARGET = (
    select(st.CHATBOT.c.id.label("head_id"), CH.c.id.label("channel_id"), CH.c.enabled)
    .select_from(st.CHATBOT)
    .outerjoin(
        CH,
        and_(
            CH.c.chatbot_id == st.CHATBOT.c.id,
            CH.c.platform == _PLATFORM,
            CH.c.deleted.is_(False),
        ),
    )
    .where(
        st.CHATBOT.c.public_id == bindparam("public_id"),
        st.CHATBOT.c.team_id == _TEAM,
        st.CHATBOT.c.working_version_id.is_(None),
        st.CHATBOT.c.is_archived.is_(False),
    )
)

REPLAY = (
    select(D.c.request_hash, D.c.public_id, S.c.external_id, D.c.platform, D.c.created_at)
    .join(S, S.c.id == D.c.session_id)
    .where(
        D.c.idempotency_credential == bindparam("p_credential", type_=String),
        D.c.idempotency_key == bindparam("p_key", type_=String),
    )
)


# On `api` the participant is a user of the team (identifier = their email), as incoming_message
# makes it: linked to that user, whichever of the two comes first.
_MEMBER = (
    select(User.id)
    .join(Membership, Membership.user_id == User.id)
    .where(Membership.team_id == _TEAM, User.email == bindparam("identifier", type_=String))
    .scalar_subquery()
)
_USER = case((_PLATFORM == Platform.api, _MEMBER), else_=None)


def _participant_upsert(insert: Any) -> Any:
    # DO UPDATE (not NOTHING) so that the row comes back, and is locked, when it exists.
    statement = insert(P).values(
        team_id=_TEAM,
        platform=_PLATFORM,
        identifier=bindparam("identifier", type_=String),
        user_id=_USER,
        name="",
        public_id=bindparam("new_public_id"),
        created_at=st.NOW,
    )
    return statement.on_conflict_do_update(
        index_elements=[P.c.team_id, P.c.platform, P.c.identifier],
        set_={"user_id": func.coalesce(P.c.user_id, statement.excluded.user_id)},
    ).returning(P.c.id)


PARTICIPANT_UPSERT = {"postgresql": _participant_upsert(postgresql.insert),
                      "sqlite": _participant_upsert(sqlite.insert)}  # fmt: skip
_OF_PARTICIPANT = (
    PD.c.participant_id == bindparam("p_participant_id", type_=Integer),
    PD.c.chatbot_id == bindparam("p_chatbot_id", type_=Integer),
)
PARTICIPANT_DATA = select(PD.c.id, PD.c.data, PD.c.system_metadata).where(*_OF_PARTICIPANT)


def _data_insert(insert: Any) -> Any:
    return (
        insert(PD)
        .values(
            participant_id=bindparam("p_participant_id", type_=Integer),
            chatbot_id=bindparam("p_chatbot_id", type_=Integer),
            data=bindparam("data", type_=PD.c.data.type),
            system_metadata={},
        )
        .on_conflict_do_nothing()  # an incoming_message's first contact made it meanwhile
        .returning(PD.c.id)
    )


DATA_INSERT = {"postgresql": _data_insert(postgresql.insert), "sqlite": _data_insert(sqlite.insert)}
DATA_UPDATE = (
    update(PD)
    .where(PD.c.id == bindparam("p_id", type_=Integer))
    .values(data=bindparam("data", type_=PD.c.data.type))
)

_OWNER = (
    S.c.team_id == _TEAM,
    S.c.chatbot_id == bindparam("p_chatbot_id", type_=Integer),
    S.c.channel_id == bindparam("p_channel_id", type_=Integer),
    S.c.participant_id == bindparam("p_participant_id", type_=Integer),
)
OPEN_SESSION = select(S.c.id, S.c.external_id, S.c.state).where(*_OWNER, S.c.ended_at.is_(None))


def _session_insert(insert: Any) -> Any:
    return (
        insert(S)
        .values(
            external_id=bindparam("new_external_id", type_=String),
            team_id=_TEAM,
            chatbot_id=bindparam("p_chatbot_id", type_=Integer),
            channel_id=bindparam("p_channel_id", type_=Integer),
            participant_id=bindparam("p_participant_id", type_=Integer),
            platform=_PLATFORM,
            status=SessionStatus.setup,
            state=bindparam("state", type_=S.c.state.type),
            versions_seen=[],
            created_at=st.NOW,
            last_activity_at=st.NOW,
        )
        .on_conflict_do_nothing()  # a turn opened the participant's session meanwhile
        .returning(S.c.id, S.c.external_id, S.c.state)
    )


SESSION_INSERT = {"postgresql": _session_insert(postgresql.insert),
                  "sqlite": _session_insert(sqlite.insert)}  # fmt: skip
STATE_UPDATE = (
    update(S)
    .where(S.c.id == st.SESSION_ID)
    .values(state=bindparam("state", type_=S.c.state.type))
)


def _delivery_insert(insert: Any, *also: Any) -> Any:
    return (
        insert(D)
        .values(
            public_id=bindparam("new_public_id"),
            team_id=_TEAM,
            session_id=st.SESSION_ID,
            channel_id=bindparam("p_channel_id", type_=Integer),
            platform=_PLATFORM,
            recipient=bindparam("recipient", type_=String),
            prompt_text=bindparam("prompt_text", type_=String),
            message_text=bindparam("message_text", type_=String),
            status=DeliveryStatus.pending,
            attempts=0,
            next_attempt_at=st.NOW,
            created_at=st.NOW,
            updated_at=st.NOW,
            idempotency_credential=bindparam("p_credential", type_=String),
            idempotency_key=bindparam("p_key", type_=String),
            request_hash=bindparam("request_hash", type_=String),
        )
        .on_conflict_do_nothing()  # the same Idempotency-Key, committed first by a concurrent repeat
        .returning(D.c.public_id, *also)
    )


# On PostgreSQL the new delivery wakes the workers (a NOTIFY is delivered at commit).
DELIVERY_INSERT = {
    "postgresql": _delivery_insert(postgresql.insert, func.pg_notify(DELIVERY_DUE_CHANNEL, "")),
    "sqlite": _delivery_insert(sqlite.insert),
}


class IdempotencyRace(Exception):
    """A concurrent request with the same ``Idempotency-Key`` committed first: roll back, and
    answer as that one did."""


class TriggerWriter:
    def __init__(self, db: Executor) -> None:
        self.db = db

    async def replay(self, credential: str, key: str) -> Replay | None:
        row = await self.db.first(REPLAY, {"p_credential": credential, "p_key": key})
        return None if row is None else Replay(*row.values())

    async def lock_participant(self, team_id: int, platform: str, identifier: str, now: datetime) -> int:
        params = {"p_team_id": team_id, "p_platform": platform, "identifier": identifier,
                  "new_public_id": uuid.uuid4(), "now": now}  # fmt: skip
        row = await self.db.first(PARTICIPANT_UPSERT[self.db.dialect], params)
        assert row is not None  # an upsert always returns its row
        return row["id"]

    async def merge_participant_data(
        self, participant_id: int, chatbot_id: int, patch: dict[str, Any]
    ) -> dict[str, Any]:
        """Shallow-merge ``patch`` into the participant's data for the chatbot (the row created
        when missing); returns the row's system metadata (consent, platform ids)."""
        where = {"p_participant_id": participant_id, "p_chatbot_id": chatbot_id}
        row = await self.db.first(PARTICIPANT_DATA, where)
        if row is None:
            if await self.db.first(DATA_INSERT[self.db.dialect], {**where, "data": patch}):
                return {}
            row = await self.db.first(PARTICIPANT_DATA, where)
            assert row is not None
        if patch:
            await self.db.execute(DATA_UPDATE, {"p_id": row["id"], "data": {**(row["data"] or {}), **patch}})
        return row["system_metadata"] or {}

    async def open_session(self, owner: Mapping[str, Any]) -> OpenSession | None:
        row = await self.db.first(OPEN_SESSION, owner)
        return None if row is None else OpenSession(row["id"], row["external_id"], row["state"] or {})

    async def end_session(self, session_id: int, now: datetime) -> None:
        await self.db.execute(
            st.END_SESSION, {"session_id": session_id, "now": now, "status": SessionStatus.pending_review}
        )

    async def create_session(
        self, owner: Mapping[str, Any], state: dict[str, Any], now: datetime
    ) -> OpenSession:
        params = {**owner, "new_external_id": str(uuid.uuid4()), "state": state, "now": now}
        row = await self.db.first(SESSION_INSERT[self.db.dialect], params)
        if row is None:  # a turn created it first: use that one, with this state merged
            found = await self.open_session(owner)
            assert found is not None
            await self.set_state(found.id, {**found.state, **state})
            return found
        return OpenSession(row["id"], row["external_id"], row["state"] or {})

    async def set_state(self, session_id: int, state: dict[str, Any]) -> None:
        await self.db.execute(STATE_UPDATE, {"session_id": session_id, "state": state})

    async def add_delivery(self, delivery: NewDelivery) -> uuid.UUID:
        params = {
            "new_public_id": uuid.uuid4(),
            "p_team_id": delivery.team_id,
            "session_id": delivery.session_id,
            "p_channel_id": delivery.channel_id,
            "p_platform": delivery.platform,
            "recipient": delivery.recipient,
            "prompt_text": delivery.prompt_text,
            "message_text": delivery.message_text,
            "now": delivery.now,
            "p_credential": delivery.idempotency_credential,
            "p_key": delivery.idempotency_key,
            "request_hash": delivery.request_hash,
        }
        row = await self.db.first(DELIVERY_INSERT[self.db.dialect], params)
        if row is None:
            raise IdempotencyRace()
        return row["public_id"]


def owner_params(team_id: int, chatbot_id: int, channel_id: int, participant_id: int,
                 platform: str) -> dict[str, Any]:  # fmt: skip
    return {"p_team_id": team_id, "p_chatbot_id": chatbot_id, "p_channel_id": channel_id,
            "p_participant_id": participant_id, "p_platform": platform}  # fmt: skip
