"""The ``TurnStore`` contract (app/stores/base.py), one suite for every store of the database
under test: ``SqlAlchemyStore`` always (SQLite, or PostgreSQL through SQLAlchemy) and
``PostgresStore`` when CHATBOTS_TEST_DATABASE_URL is PostgreSQL.

Rows are arranged with the factories and the ``db`` sessionmaker; every test checks what the
store returns and reads the rows back with SQLAlchemy. A claim that fails must write nothing:
``snapshot`` holds every conversation row of the team, leases included.
"""

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest
from sqlalchemy import delete, func, select, update

from app.crypto import sha256_hex
from app.db import driver_dsn, make_driver_pool, make_engine, utcnow
from app.models import (
    ApiKey,
    Channel,
    Chatbot,
    ChatMessage,
    ChatSession,
    LlmProvider,
    Membership,
    Participant,
    ParticipantData,
    Platform,
    SessionWaiter,
    User,
)
from app.services.chatbots import publish_version
from app.stores.base import (
    BOT_FIELDS,
    ApiChannel,
    ApiKeyRecord,
    BotConfig,
    Claim,
    ClaimRequest,
    NewMessage,
    ProviderConfig,
    SessionFound,
    SessionKey,
    SessionUpdate,
    StoredMessage,
    TurnStore,
)
from app.stores.listen import SessionListener
from app.stores.postgres_store import PostgresStore
from app.stores.sqlalchemy_store import SqlAlchemyStore
from tests.factories import World, add_key, add_user, make_world

LEASE = timedelta(seconds=60)
MINUTE = timedelta(minutes=1)


# --- Stores -------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlalchemy", "postgres"])
async def store(request: pytest.FixtureRequest, settings: Any) -> AsyncIterator[TurnStore]:
    """Each store kind, built from the test settings as app/runtime.py builds it."""
    url = settings.database_url
    if request.param == "postgres":
        if not url.startswith("postgresql"):
            pytest.skip("PostgresStore runs on PostgreSQL only")
        pool = await make_driver_pool(url, 4)
        listener = SessionListener(driver_dsn(url), asyncpg.connect)
        try:
            yield PostgresStore(pool, listener)
        finally:
            await listener.close()
            await pool.close()
    else:
        engine = make_engine(url, pool_size=4, max_overflow=4)
        try:
            yield SqlAlchemyStore(engine)
        finally:
            await engine.dispose()


def notifies(store: TurnStore) -> bool:
    """PostgresStore wakes waiters with NOTIFY; SqlAlchemyStore polls."""
    return isinstance(store, PostgresStore)


# --- Places, requests and rows ----------------------------------------------------------------


@dataclass
class Place:
    """A team's chatbot, its API channel and one user: where claims happen."""

    store: TurnStore
    world: World
    channel: ApiChannel

    @property
    def team_id(self) -> int:
        return self.world.team.id

    @property
    def identifier(self) -> str:
        return self.world.user.email

    def key(self, chatbot_id: int | None = None) -> SessionKey:
        return SessionKey(self.team_id, chatbot_id or self.world.chatbot.id, self.channel.id, Platform.api)

    def ask(
        self,
        participant_id: int | None,
        human: str | None = "hello",
        *,
        identifier: str | None = None,
        chatbot_id: int | None = None,
        now: datetime | None = None,
        **changes: Any,
    ) -> ClaimRequest:
        now = now or utcnow()
        return ClaimRequest(
            key=self.key(chatbot_id), participant_id=participant_id,
            identifier=identifier or self.identifier, user_id=self.world.user.id,
            now=now, lease_until=now + LEASE, human=human, **changes,
        )  # fmt: skip

    async def first_contact(self, human: str | None = "first", **changes: Any) -> Claim:
        claim = await self.store.claim(self.ask(None, human, **changes))
        assert claim is not None
        return claim

    async def load(self, version: int | None = None, identifier: str | None = None) -> Any:
        return await self.store.load_target(
            self.team_id, self.world.chatbot.public_id, version, identifier or self.identifier
        )


@pytest.fixture
async def place(store: TurnStore, world: World) -> Place:
    return Place(store, world, await store.create_api_channel(world.team.id))


@pytest.fixture
async def started(place: Place) -> Claim:
    """A participant's first message, its session released since: an open, free session."""
    claim = await place.first_contact("first")
    await place.store.release(claim.id, claim.lease_until)
    return claim


async def rows(db: Any, statement: Any) -> list[Any]:
    async with db() as s:
        return list((await s.scalars(statement)).all())


async def session_row(db: Any, session_id: int) -> ChatSession:
    async with db() as s:
        return await s.scalar(select(ChatSession).where(ChatSession.id == session_id))


async def sessions_of(db: Any, team_id: int) -> list[ChatSession]:
    return await rows(db, select(ChatSession).where(ChatSession.team_id == team_id).order_by(ChatSession.id))


async def messages_of(db: Any, session_id: int) -> list[ChatMessage]:
    return await rows(db, select(ChatMessage).where(ChatMessage.session_id == session_id).order_by(ChatMessage.id))


async def contents_of(db: Any, session_id: int) -> list[str]:
    return [m.content for m in await messages_of(db, session_id)]


async def team_contents(db: Any, team_id: int) -> list[str]:
    sessions = select(ChatSession.id).where(ChatSession.team_id == team_id)
    return await rows(db, select(ChatMessage.content).where(ChatMessage.session_id.in_(sessions)))


async def participant_data_of(db: Any, participant_id: int) -> list[ParticipantData]:
    return await rows(
        db, select(ParticipantData).where(ParticipantData.participant_id == participant_id).order_by(ParticipantData.id)
    )


async def change(db: Any, model: Any, row_id: int, **values: Any) -> None:
    async with db() as s:
        await s.execute(update(model).where(model.id == row_id).values(**values))
        await s.commit()


async def snapshot(db: Any, team_id: int) -> dict[str, list[tuple[Any, ...]]]:
    """Every conversation row of the team, every column: equal before and after means that
    nothing was written."""
    sessions = select(ChatSession.id).where(ChatSession.team_id == team_id)
    participants = select(Participant.id).where(Participant.team_id == team_id)
    tables = {
        "channel": select(Channel.__table__).where(Channel.team_id == team_id),
        "participant": select(Participant.__table__).where(Participant.team_id == team_id),
        "participant_data": select(ParticipantData.__table__).where(
            ParticipantData.participant_id.in_(participants)
        ),
        "chat_session": select(ChatSession.__table__).where(ChatSession.team_id == team_id),
        "chat_message": select(ChatMessage.__table__).where(ChatMessage.session_id.in_(sessions)),
    }
    async with db() as s:
        return {
            name: [tuple(r) for r in (await s.execute(q.order_by(q.selected_columns.id))).all()]
            for name, q in tables.items()
        }


def without_leases(rows_by_table: dict[str, list[tuple[Any, ...]]]) -> dict[str, list[tuple[Any, ...]]]:
    lease = [c.name for c in ChatSession.__table__.columns].index("lease_until")
    sessions = [row[:lease] + row[lease + 1 :] for row in rows_by_table["chat_session"]]
    return {**rows_by_table, "chat_session": sessions}


async def add_chatbot(db: Any, world: World, name: str = "Other bot") -> Chatbot:
    async with db() as s:
        bot = Chatbot(team_id=world.team.id, name=name, llm_provider_id=world.provider.id, llm_model="m")
        s.add(bot)
        await s.commit()
        return bot


def bot_config(row: Chatbot) -> BotConfig:
    return BotConfig(*(getattr(row, name) for name in BOT_FIELDS))


# --- load_target and the API channel ----------------------------------------------------------


@pytest.fixture
async def versions(db: Any, world: World) -> dict[int, Chatbot]:
    """v1 published (the factory's), v2 published without becoming the default, and the
    head (number 3) edited since: each with its own system prompt."""
    async with db() as s:
        head = await s.get(Chatbot, world.chatbot.id)
        head.system_prompt, head.temperature, head.max_tokens = "prompt of v2", 0.25, 77
        await publish_version(s, head, make_default=False)
        head.system_prompt, head.consent_text = "draft prompt", "Consent?"
        await s.commit()
        found = (await s.scalars(select(Chatbot).where(
            (Chatbot.id == head.id) | (Chatbot.working_version_id == head.id)))).all()  # fmt: skip
    by_number = {bot.version_number: bot for bot in found}
    assert sorted(by_number) == [1, 2, 3] and by_number[3].id == world.chatbot.id
    return by_number


@pytest.mark.parametrize(
    ("version", "answering", "label"),
    [(None, 1, "v1"), (0, 1, "v1"), (1, 1, "v1"), (2, 2, "v2"), (3, 3, "v3-unreleased")],
)
async def test_load_target_answers_with_the_version_asked_for(
    place: Place, versions: dict[int, Chatbot], version: int | None, answering: int, label: str
) -> None:
    """None or 0: the published version; N: version N; the head's number: the head (draft)."""
    target = await place.load(version)
    row = versions[answering]
    assert (target.head_id, target.head_number) == (place.world.chatbot.id, 3)
    assert target.bot == bot_config(row)
    assert target.bot.version_number == answering and target.bot.version_label == label
    assert target.bot.working_version_id == (None if answering == 3 else place.world.chatbot.id)


@pytest.mark.parametrize("version", [4, 99])
async def test_load_target_of_an_unknown_version_has_no_bot(
    place: Place, versions: dict[int, Chatbot], version: int
) -> None:
    target = await place.load(version)
    assert target is not None and target.bot is None
    assert (target.head_id, target.head_number) == (place.world.chatbot.id, 3)


async def test_load_target_of_an_archived_version_has_no_bot(
    place: Place, db: Any, versions: dict[int, Chatbot]
) -> None:
    await change(db, Chatbot, versions[2].id, is_archived=True)
    assert (await place.load(2)).bot is None
    assert (await place.load(1)).bot == bot_config(versions[1])


async def test_load_target_without_a_published_version_answers_with_the_head(
    store: TurnStore, db: Any, settings: Any
) -> None:
    world = await make_world(db, settings, api_base="http://127.0.0.1:9/v1", publish=False)
    target = await store.load_target(world.team.id, world.chatbot.public_id, None, world.user.email)
    assert target.bot.working_version_id is None and target.bot.version_label == "v1-unreleased"
    assert target.bot.system_prompt == world.chatbot.system_prompt


async def test_load_target_finds_only_the_teams_live_chatbot_heads(
    place: Place, db: Any, settings: Any, versions: dict[int, Chatbot]
) -> None:
    store, team_id, email = place.store, place.team_id, place.identifier
    other = await make_world(db, settings, api_base="http://127.0.0.1:9/v1")
    assert await store.load_target(team_id, uuid.uuid4(), None, email) is None
    assert await store.load_target(team_id, other.chatbot.public_id, None, email) is None
    assert await store.load_target(team_id, versions[1].public_id, None, email) is None  # a version
    assert await place.load() is not None
    await change(db, Chatbot, place.world.chatbot.id, is_archived=True)
    assert await place.load() is None
    assert await place.load(2) is None


async def test_provider_is_the_answering_versions_else_the_heads(place: Place, db: Any) -> None:
    world = place.world
    async with db() as s:
        heads = LlmProvider(team_id=world.team.id, type="head-type", name="head's", config={"api_base": "http://head"})
        s.add(heads)
        await s.flush()
        await s.execute(update(Chatbot).where(Chatbot.id == world.chatbot.id).values(llm_provider_id=heads.id))
        await s.commit()
    version_1 = ProviderConfig(world.provider.type, world.provider.config)
    head = ProviderConfig("head-type", {"api_base": "http://head"})
    assert (await place.load()).provider == version_1
    assert (await place.load(2)).provider == head  # the head answers

    async with db() as s:  # ON DELETE SET NULL: version 1 has no provider any more
        await s.execute(delete(LlmProvider).where(LlmProvider.id == world.provider.id))
        await s.commit()
    assert await rows(db, select(Chatbot.llm_provider_id).where(Chatbot.working_version_id == world.chatbot.id)) == [None]
    target = await place.load()
    assert target.bot.version_number == 1 and target.provider == head

    async with db() as s:
        await s.execute(delete(LlmProvider).where(LlmProvider.id == heads.id))
        await s.commit()
    assert (await place.load()).provider is None


async def test_channel_and_participant_are_none_until_created(store: TurnStore, db: Any, world: World) -> None:
    target = await store.load_target(world.team.id, world.chatbot.public_id, None, world.user.email)
    assert target.channel is None and target.participant_id is None

    channel = await store.create_api_channel(world.team.id)
    [row] = await rows(db, select(Channel).where(Channel.team_id == world.team.id))
    assert channel == ApiChannel(row.id, True, None)
    assert (row.platform, row.chatbot_id, row.deleted) == (Platform.api, None, False)
    place = Place(store, world, channel)
    target = await place.load()
    assert target.channel == channel and target.participant_id is None

    claim = await place.first_contact()
    assert (await place.load()).participant_id == claim.participant_id
    assert (await place.load(identifier="someone-else@example.com")).participant_id is None


@pytest.mark.parametrize("concurrently", [False, True], ids=["one-after-the-other", "concurrently"])
async def test_create_api_channel_creates_one_channel(
    store: TurnStore, db: Any, world: World, concurrently: bool
) -> None:
    team_id = world.team.id
    if concurrently:
        first, second = await asyncio.gather(store.create_api_channel(team_id), store.create_api_channel(team_id))
    else:
        first, second = await store.create_api_channel(team_id), await store.create_api_channel(team_id)
    assert first == second
    assert await rows(db, select(Channel.id).where(Channel.team_id == team_id)) == [first.id]


async def test_a_deleted_api_channel_is_not_the_teams_channel(store: TurnStore, db: Any, world: World) -> None:
    old = await store.create_api_channel(world.team.id)
    await change(db, Channel, old.id, deleted=True)
    target = await store.load_target(world.team.id, world.chatbot.public_id, None, world.user.email)
    assert target.channel is None
    new = await store.create_api_channel(world.team.id)
    assert new.id != old.id and (await store.load_target(
        world.team.id, world.chatbot.public_id, None, world.user.email)).channel == new  # fmt: skip


async def test_the_channel_as_configured(store: TurnStore, db: Any, world: World) -> None:
    channel = await store.create_api_channel(world.team.id)
    await change(db, Channel, channel.id, enabled=False, disabled_message="We are closed")
    target = await store.load_target(world.team.id, world.chatbot.public_id, None, world.user.email)
    assert target.channel == ApiChannel(channel.id, False, "We are closed")
    assert await store.create_api_channel(world.team.id) == target.channel


# --- claim: first contact ---------------------------------------------------------------------


async def test_first_contact_creates_the_participant_its_data_and_a_held_session(place: Place, db: Any) -> None:
    request = place.ask(None, "hello there", history_limit=10)
    claim = await place.store.claim(request)

    assert claim is not None and claim.participant_id is not None
    assert (claim.status, claim.external_id, claim.history, claim.participant_data) == (
        "setup", request.new_external_id, [], {}
    )
    assert (claim.state, claim.versions_seen, claim.summary, claim.summary_until_id) == ({}, [], None, None)

    [participant] = await rows(db, select(Participant).where(Participant.team_id == place.team_id))
    assert participant.id == claim.participant_id
    assert (participant.platform, participant.identifier, participant.user_id) == (
        Platform.api, place.identifier, place.world.user.id
    )
    [data] = await participant_data_of(db, participant.id)
    assert (data.chatbot_id, data.data) == (place.world.chatbot.id, {})
    [session] = await sessions_of(db, place.team_id)
    assert session.id == claim.id
    assert (session.external_id, session.participant_id, session.chatbot_id, session.channel_id) == (
        request.new_external_id, participant.id, place.world.chatbot.id, place.channel.id
    )
    assert (session.status, session.lease_until, session.ended_at) == ("setup", request.lease_until, None)
    assert (session.created_at, session.last_activity_at) == (request.now, request.now)
    [message] = await messages_of(db, claim.id)
    assert (message.role, message.content, message.hidden, message.created_at) == (
        "human", "hello there", False, request.now
    )


async def test_concurrent_first_contacts_create_one_participant_and_one_session(place: Place, db: Any) -> None:
    for attempt in range(3):  # a few rounds: the race has more than one interleaving
        identifier = f"racer-{attempt}-{uuid.uuid4().hex[:6]}@example.com"
        before = await snapshot(db, place.team_id)
        results = await asyncio.gather(
            *(place.store.claim(place.ask(None, f"message {n}", identifier=identifier)) for n in range(2))
        )
        won = [(n, claim) for n, claim in enumerate(results) if claim is not None]
        assert len(won) == 1, results  # the loser returned None
        [(winner, claim)] = won
        participants = await rows(db, select(Participant.id).where(Participant.identifier == identifier))
        assert participants == [claim.participant_id]
        after = await snapshot(db, place.team_id)
        new_sessions = [s for s in after["chat_session"] if s not in before["chat_session"]]
        assert [s[0] for s in new_sessions] == [claim.id]
        assert await contents_of(db, claim.id) == [f"message {winner}"]  # nothing of the loser's
        assert len(after["participant_data"]) == len(before["participant_data"]) + 1


async def test_first_contact_of_a_known_identifier_is_refused(place: Place, db: Any, started: Claim) -> None:
    """A request that saw no participant, while another request created it, claims nothing:
    the pipeline loads the participant again and claims with it."""
    before = await snapshot(db, place.team_id)
    assert await place.store.claim(place.ask(None, "late")) is None
    assert await snapshot(db, place.team_id) == before


# --- claim: a known participant ---------------------------------------------------------------


async def test_claim_takes_the_open_session_and_stores_the_message(place: Place, db: Any, started: Claim) -> None:
    request = place.ask(started.participant_id, "second")
    claim = await place.store.claim(request)
    assert claim is not None
    assert (claim.id, claim.external_id, claim.participant_id, claim.status) == (
        started.id, started.external_id, started.participant_id, "setup"
    )
    session = await session_row(db, started.id)
    assert (session.lease_until, session.ended_at) == (request.lease_until, None)
    messages = await messages_of(db, started.id)
    assert [(m.role, m.content) for m in messages] == [("human", "first"), ("human", "second")]
    assert messages[-1].created_at == request.now
    assert len(await sessions_of(db, place.team_id)) == 1
    assert len(await participant_data_of(db, started.participant_id)) == 1


async def test_claim_without_a_message_stores_none(place: Place, db: Any, started: Claim) -> None:
    assert await place.store.claim(place.ask(started.participant_id, None)) is not None
    assert await contents_of(db, started.id) == ["first"]


async def test_a_held_lease_is_not_claimed_until_released(place: Place, db: Any, started: Claim) -> None:
    store, pid = place.store, started.participant_id
    held = await store.claim(place.ask(pid, "holder"))
    assert held is not None
    before = await snapshot(db, place.team_id)
    assert await store.claim(place.ask(pid, "while busy")) is None
    assert await store.claim(place.ask(pid, "named, busy", external_id=started.external_id)) is None
    assert await store.claim(place.ask(pid, "by id, busy", session_id=started.id)) is None
    assert await snapshot(db, place.team_id) == before

    await store.release(started.id, held.lease_until)
    assert (await session_row(db, started.id)).lease_until is None
    assert without_leases(await snapshot(db, place.team_id)) == without_leases(before)  # nothing else

    again = await store.claim(place.ask(pid, "after release"))
    assert again is not None and again.id == started.id
    assert await contents_of(db, started.id) == ["first", "holder", "after release"]


async def test_a_release_of_an_earlier_lease_leaves_the_current_holder_alone(place: Place, db: Any, started: Claim) -> None:
    # A turn whose release was retried after a crash (its own final write had committed) must
    # not free the lease a later turn has taken since.
    store, pid = place.store, started.participant_id
    held = await store.claim(place.ask(pid, "holder"))
    assert held is not None and held.lease_until != started.lease_until
    await store.release(started.id, started.lease_until)  # the earlier turn's, late
    assert (await session_row(db, started.id)).lease_until is not None
    assert await store.claim(place.ask(pid, "while still held")) is None

    await store.release(started.id, held.lease_until)
    assert await store.claim(place.ask(pid, "after the holder's release")) is not None


async def test_claim_by_session_id(place: Place, db: Any, started: Claim) -> None:
    """The session a turn waited for, claimed by its id."""
    pid = started.participant_id
    before = await snapshot(db, place.team_id)
    assert await place.store.claim(place.ask(pid, "unknown", session_id=10**9)) is None
    assert await snapshot(db, place.team_id) == before
    request = place.ask(pid, "waited", session_id=started.id)
    claim = await place.store.claim(request)
    assert claim is not None and (claim.id, claim.external_id) == (started.id, started.external_id)
    assert (await session_row(db, started.id)).lease_until == request.lease_until
    assert await contents_of(db, started.id) == ["first", "waited"]


async def test_an_expired_lease_does_not_block(place: Place, db: Any, started: Claim) -> None:
    pid = started.participant_id
    assert await place.store.claim(place.ask(pid, "crashed turn")) is not None
    await change(db, ChatSession, started.id, lease_until=utcnow() - timedelta(seconds=1))
    request = place.ask(pid, "next")
    claim = await place.store.claim(request)
    assert claim is not None and claim.id == started.id
    assert (await session_row(db, started.id)).lease_until == request.lease_until
    assert await contents_of(db, started.id) == ["first", "crashed turn", "next"]


@pytest.mark.parametrize("hours", [-5, 5])
async def test_leases_compare_as_instants_whatever_the_time_zone(
    place: Place, started: Claim, hours: int
) -> None:
    """A lease taken with times in another zone blocks until the same instant in UTC."""
    zone, pid = timezone(timedelta(hours=hours)), started.participant_id
    assert await place.store.claim(place.ask(pid, "zoned", now=utcnow().astimezone(zone))) is not None
    assert await place.store.claim(place.ask(pid, "utc")) is None
    expired = utcnow().astimezone(zone) + LEASE + timedelta(seconds=1)
    assert await place.store.claim(place.ask(pid, "after expiry", now=expired)) is not None


async def test_waiting_turns_tickets_are_served_lowest_first(place: Place, db: Any, started: Claim) -> None:
    """A turn that found the session busy holds a ticket: the lowest live ticket claims next,
    a newcomer (no ticket) claims past none, and a claim uses its ticket up."""
    store, pid = place.store, started.participant_id
    first = await store.take_ticket(started.id, utcnow())
    second = await store.take_ticket(started.id, utcnow())
    assert first < second
    before = await snapshot(db, place.team_id)
    assert await store.claim(place.ask(pid, "newcomer")) is None
    assert await store.claim(place.ask(pid, "named newcomer", external_id=started.external_id)) is None
    assert await store.claim(place.ask(pid, "second", session_id=started.id, ticket=second)) is None
    assert await snapshot(db, place.team_id) == before

    claim = await store.claim(place.ask(pid, "first", session_id=started.id, ticket=first))
    assert claim is not None and claim.id == started.id
    await store.release(started.id, claim.lease_until)
    assert await store.claim(place.ask(pid, "newcomer again")) is None  # the second still waits
    second_claim = await store.claim(place.ask(pid, "second", session_id=started.id, ticket=second))
    assert second_claim is not None
    await store.release(started.id, second_claim.lease_until)
    assert await store.claim(place.ask(pid, "newcomer at last")) is not None
    assert await contents_of(db, started.id) == ["first", "first", "second", "newcomer at last"]
    async with db() as s:
        assert await s.scalar(select(func.count()).select_from(SessionWaiter).where(
            SessionWaiter.session_id == started.id)) == 0  # fmt: skip


async def test_a_dropped_or_expired_ticket_no_longer_counts(place: Place, started: Claim) -> None:
    store, pid = place.store, started.participant_id
    dropped = await store.take_ticket(started.id, utcnow())
    await store.drop_ticket(dropped)
    await store.take_ticket(started.id, utcnow() - LEASE - timedelta(seconds=1))  # its process died
    assert await store.claim(place.ask(pid, "no one waits")) is not None


async def test_a_named_session_is_claimed_only_by_its_owner(place: Place, db: Any, started: Claim) -> None:
    pid = started.participant_id
    other = await place.first_contact("other's first", identifier="other@example.com")
    await place.store.release(other.id, other.lease_until)
    before = await snapshot(db, place.team_id)
    assert await place.store.claim(place.ask(pid, "not mine", external_id=other.external_id)) is None
    assert await place.store.claim(place.ask(pid, "unknown", external_id=str(uuid.uuid4()))) is None
    assert await snapshot(db, place.team_id) == before  # no session created for a name

    claim = await place.store.claim(place.ask(pid, "mine", external_id=started.external_id))
    assert claim is not None and claim.id == started.id
    assert await contents_of(db, started.id) == ["first", "mine"]
    assert await contents_of(db, other.id) == ["other's first"]


async def test_an_ended_session_is_never_claimed(place: Place, db: Any, started: Claim) -> None:
    pid = started.participant_id
    await change(db, ChatSession, started.id, status="complete", ended_at=utcnow())
    before = await snapshot(db, place.team_id)
    assert await place.store.claim(place.ask(pid, "named", external_id=started.external_id)) is None
    assert await place.store.claim(place.ask(pid, "by id", session_id=started.id)) is None
    assert await snapshot(db, place.team_id) == before


async def test_without_an_open_session_a_new_one_is_created(place: Place, db: Any, started: Claim) -> None:
    pid = started.participant_id
    await change(db, ChatSession, started.id, status="complete", ended_at=utcnow())
    request = place.ask(pid, "a new conversation", history_limit=10)
    claim = await place.store.claim(request)
    assert claim is not None and claim.id != started.id
    assert (claim.external_id, claim.participant_id, claim.status, claim.history) == (
        request.new_external_id, pid, "setup", []
    )
    old, new = await sessions_of(db, place.team_id)
    assert (old.id, old.status) == (started.id, "complete")
    assert (new.id, new.ended_at, new.lease_until, new.participant_id) == (claim.id, None, request.lease_until, pid)
    assert await contents_of(db, claim.id) == ["a new conversation"]
    assert await contents_of(db, started.id) == ["first"]
    assert len(await participant_data_of(db, pid)) == 1


@pytest.mark.parametrize("open_session", [True, False], ids=["open-session", "no-open-session"])
async def test_concurrent_claims_of_a_known_participant_take_one_session(
    place: Place, db: Any, started: Claim, open_session: bool
) -> None:
    pid = started.participant_id
    if not open_session:
        await change(db, ChatSession, started.id, status="complete", ended_at=utcnow())
    results = await asyncio.gather(*(place.store.claim(place.ask(pid, f"racer {n}")) for n in range(2)))
    won = [(n, claim) for n, claim in enumerate(results) if claim is not None]
    assert len(won) == 1, results
    [(winner, claim)] = won
    open_sessions = [s for s in await sessions_of(db, place.team_id) if s.ended_at is None]
    assert [s.id for s in open_sessions] == [claim.id]
    assert (claim.id == started.id) is open_session
    assert (await contents_of(db, claim.id))[-1:] == [f"racer {winner}"]
    assert f"racer {1 - winner}" not in await team_contents(db, place.team_id)  # the loser's


async def test_a_known_participants_first_session_with_another_chatbot_creates_its_data(
    place: Place, db: Any, started: Claim
) -> None:
    other_bot = await add_chatbot(db, place.world)
    request = place.ask(started.participant_id, "hi other bot", chatbot_id=other_bot.id)
    claim = await place.store.claim(request)
    assert claim is not None and claim.id != started.id and claim.participant_data == {}
    assert (await session_row(db, claim.id)).chatbot_id == other_bot.id
    data = await participant_data_of(db, started.participant_id)
    assert [(d.chatbot_id, d.data) for d in data] == [(place.world.chatbot.id, {}), (other_bot.id, {})]
    assert await contents_of(db, claim.id) == ["hi other bot"]


# --- claim: consent, history, participant data ------------------------------------------------


@pytest.mark.parametrize("by_id", [False, True], ids=["open", "by-id"])
@pytest.mark.parametrize(
    ("status", "consent", "stored"),
    [("setup", True, False), ("pending", True, False), ("active", True, True), ("setup", False, True),
     ("pending", False, True)],
)  # fmt: skip
async def test_the_message_waits_for_consent(
    place: Place, db: Any, started: Claim, status: str, consent: bool, stored: bool, by_id: bool
) -> None:
    await change(db, ChatSession, started.id, status=status)
    session_id = started.id if by_id else None
    claim = await place.store.claim(
        place.ask(started.participant_id, "my message", consent=consent, session_id=session_id)
    )
    assert claim is not None and claim.status == status
    assert (await session_row(db, started.id)).lease_until is not None  # claimed all the same
    assert await contents_of(db, started.id) == (["first", "my message"] if stored else ["first"])


async def test_a_first_contact_asking_for_consent_stores_no_message(place: Place, db: Any) -> None:
    claim = await place.first_contact("before consent", consent=True)
    assert claim.status == "setup"
    assert (await session_row(db, claim.id)).lease_until is not None
    assert await messages_of(db, claim.id) == []


async def add_messages(db: Any, session_id: int, *specs: tuple[str, str, bool], start: datetime) -> list[int]:
    """Messages (role, content, hidden), one second apart from ``start``; their ids."""
    async with db() as s:
        messages = [
            ChatMessage(session_id=session_id, role=role, content=content, hidden=hidden,
                        created_at=start + timedelta(seconds=n))  # fmt: skip
            for n, (role, content, hidden) in enumerate(specs)
        ]
        s.add_all(messages)
        await s.commit()
        return [m.id for m in messages]


CONVERSATION = [
    ("ai", "a1", False), ("human", "consent exchange", True), ("ai", "a2", False),
    ("human", "h3", False), ("ai", "hidden reply", True), ("ai", "a4", False),
]  # fmt: skip


async def test_claim_returns_the_visible_history_newest_first(place: Place, db: Any, started: Claim) -> None:
    start = utcnow()
    ids = await add_messages(db, started.id, *CONVERSATION, start=start)
    a1, _, a2, h3, _, a4 = ids
    pid, later = started.participant_id, start + timedelta(minutes=1)

    claim = await place.store.claim(place.ask(pid, "new", history_limit=3, now=later))
    assert claim.history == [StoredMessage(a4, "ai", "a4"), StoredMessage(h3, "human", "h3"),
                             StoredMessage(a2, "ai", "a2")]  # fmt: skip
    await place.store.release(started.id, claim.lease_until)

    [first] = [m.id for m in await messages_of(db, started.id) if m.content == "first"]
    [new] = [m.id for m in await messages_of(db, started.id) if m.content == "new"]
    claim = await place.store.claim(place.ask(pid, "newer", history_limit=100, now=later + timedelta(seconds=1)))
    assert [(m.id, m.content) for m in claim.history] == [
        (new, "new"), (a4, "a4"), (h3, "h3"), (a2, "a2"), (a1, "a1"), (first, "first")
    ]
    await place.store.release(started.id, claim.lease_until)

    claim = await place.store.claim(place.ask(pid, "no history", history_limit=0, now=later + timedelta(seconds=2)))
    assert claim is not None and claim.history == []
    await place.store.release(started.id, claim.lease_until)

    waited = place.ask(pid, "waited", history_limit=2, session_id=started.id, now=later + timedelta(seconds=3))
    claim = await place.store.claim(waited)  # a waiting turn's claim reads the history too
    assert [m.content for m in claim.history] == ["no history", "newer"]


async def test_read_unsummarized_returns_the_visible_window_oldest_first(
    store: TurnStore, place: Place, db: Any, started: Claim
) -> None:
    ids = await add_messages(db, started.id, *CONVERSATION, start=utcnow())
    a1, _, a2, h3, _, a4 = ids
    assert await store.read_unsummarized(started.id, a4, a1 - 1, 100) == [
        StoredMessage(a1, "ai", "a1"), StoredMessage(a2, "ai", "a2"), StoredMessage(h3, "human", "h3")
    ]  # before_id and hidden messages excluded
    assert [m.id for m in await store.read_unsummarized(started.id, a4 + 1, a1, 100)] == [a2, h3, a4]
    assert [m.id for m in await store.read_unsummarized(started.id, a4 + 1, 0, 2)] == [
        (await messages_of(db, started.id))[0].id, a1
    ]  # the limit keeps the oldest
    assert await store.read_unsummarized(started.id, a2, a1, 100) == []


async def test_claim_returns_the_session_state_and_the_participants_data_for_this_chatbot(
    place: Place, db: Any, started: Claim
) -> None:
    other_bot = await add_chatbot(db, place.world)
    await change(db, ChatSession, started.id, state={"step": 2, "answers": ["a"]})
    stored = {"name": "Ada", "facts": [1, 2], "nested": {"a": None}}
    async with db() as s:
        await s.execute(
            update(ParticipantData)
            .where(ParticipantData.participant_id == started.participant_id)
            .values(data=stored)
        )
        s.add(ParticipantData(participant_id=started.participant_id, chatbot_id=other_bot.id, data={"bot": "other"}))
        await s.commit()
    claim = await place.store.claim(place.ask(started.participant_id, "hi"))
    assert (claim.participant_data, claim.state) == (stored, {"step": 2, "answers": ["a"]})
    await place.store.release(started.id, claim.lease_until)
    claim = await place.store.claim(place.ask(started.participant_id, "hi", session_id=started.id))
    assert (claim.participant_data, claim.state) == (stored, {"step": 2, "answers": ["a"]})


# --- save, release, reset -----------------------------------------------------------------------


ANSWER = 'an "answer" with \\ backslashes,\nnew lines, ü, 🙂 and {"json": [1]}'


@pytest.mark.parametrize("release", [True, False], ids=["release", "keep-lease"])
async def test_save_stores_the_messages_in_order_and_writes_the_session(
    place: Place, db: Any, started: Claim, release: bool
) -> None:
    request = place.ask(started.participant_id, "question")
    claim = await place.store.claim(request)
    [first_id] = [m.id for m in await messages_of(db, started.id) if m.content == "first"]
    now = request.now + timedelta(seconds=5)
    messages = [
        NewMessage("human", "seed", {"seed_message": True}),
        NewMessage("ai", ANSWER, {"model": "m", "tokens": 3, "ü": ["\"q\""]}, "v1"),
        NewMessage("ai", "consent prompt", {}, "v1", hidden=True),
        *(NewMessage("ai", f"part {n}", {"n": n}, "v2") for n in range(10)),
    ]
    update_ = SessionUpdate("active", now, [1, 2], "the summary", first_id, release=release)
    await place.store.save(claim.id, messages, update_, now)

    stored = (await messages_of(db, claim.id))[2:]
    assert [(m.role, m.content, m.message_metadata, m.version_label, m.hidden) for m in stored] == [
        (m.role, m.content, m.metadata, m.version_label, m.hidden) for m in messages
    ]
    assert [m.id for m in stored] == sorted(m.id for m in stored) and all(m.created_at == now for m in stored)
    session = await session_row(db, claim.id)
    assert (session.status, session.last_activity_at, session.versions_seen, session.summary,
            session.summary_until_id) == ("active", now, [1, 2], "the summary", first_id)  # fmt: skip
    assert session.lease_until == (None if release else request.lease_until)
    assert session.ended_at is None
    following = await place.store.claim(place.ask(started.participant_id, "next", history_limit=13))
    assert (following is not None) is release
    if following is not None:  # the session as saved; one batch shares its created_at: by id
        assert (following.status, following.versions_seen, following.summary, following.summary_until_id) == (
            "active", [1, 2], "the summary", first_id
        )
        assert [m.content for m in following.history] == [
            *(f"part {n}" for n in reversed(range(10))), ANSWER, "seed", "question"
        ]


async def test_save_without_messages_writes_only_the_session(place: Place, db: Any, started: Claim) -> None:
    claim = await place.store.claim(place.ask(started.participant_id, "q"))
    now = utcnow()
    await place.store.save(claim.id, [], SessionUpdate("pending", now, [3], None, None), now)
    session = await session_row(db, claim.id)
    assert (session.status, session.last_activity_at, session.versions_seen, session.lease_until) == (
        "pending", now, [3], None
    )
    assert await contents_of(db, claim.id) == ["first", "q"]


@pytest.mark.parametrize("ended_status", ["pending-review", "complete"])
async def test_reset_ends_the_session_and_opens_a_new_one(
    place: Place, db: Any, started: Claim, ended_status: str
) -> None:
    pid = started.participant_id
    claim = await place.store.claim(place.ask(pid, None))
    reset_request = place.ask(pid, None)
    new_external_id = await place.store.reset(claim.id, reset_request, ended_status)

    old, new = await sessions_of(db, place.team_id)
    assert old.id == started.id
    assert (old.status, old.ended_at, old.lease_until) == (ended_status, reset_request.now, None)
    assert new.external_id == new_external_id != started.external_id
    assert (new.team_id, new.chatbot_id, new.channel_id, new.participant_id, new.platform) == (
        old.team_id, old.chatbot_id, old.channel_id, old.participant_id, old.platform
    )
    assert (new.status, new.ended_at, new.lease_until, new.state, new.versions_seen, new.summary) == (
        "setup", None, None, {}, [], None
    )
    assert await messages_of(db, new.id) == []
    assert await place.store.find_session(place.key(), pid, None) == SessionFound(new.id, False)
    again = await place.store.claim(place.ask(pid, "after reset"))
    assert again is not None and again.id == new.id
    assert await contents_of(db, new.id) == ["after reset"]


async def test_reset_with_the_request_whose_claim_created_the_session(place: Place, db: Any) -> None:
    """As run_turn does for a participant's first message "/reset": the same ClaimRequest
    (dataclasses.replace keeps new_external_id) created the session and then resets it."""
    request = place.ask(None, None)
    claim = await place.store.claim(request)
    request = dataclasses.replace(request, participant_id=claim.participant_id)
    try:
        new_external_id = await place.store.reset(claim.id, request, "pending-review")
    finally:
        await place.store.release(claim.id, claim.lease_until)
    old, new = await sessions_of(db, place.team_id)
    assert old.ended_at is not None and new.ended_at is None
    assert new.external_id == new_external_id != claim.external_id


# --- find_session, session_ended ----------------------------------------------------------------


async def test_find_session_and_session_ended(place: Place, db: Any, started: Claim) -> None:
    store, key, pid = place.store, place.key(), started.participant_id
    other = await place.first_contact("other's", identifier="other@example.com")
    open_one = SessionFound(started.id, False)
    assert await store.find_session(key, None, None) is None
    assert await store.find_session(key, pid, None) == open_one
    assert await store.find_session(key, pid, started.external_id) == open_one
    assert await store.find_session(key, pid, other.external_id) is None  # another owner's
    assert await store.find_session(key, pid, str(uuid.uuid4())) is None
    assert await store.find_session(dataclasses.replace(key, chatbot_id=10**9), pid, None) is None
    assert await store.session_ended(started.id) is False

    await change(db, ChatSession, started.id, status="complete", ended_at=utcnow())
    assert await store.find_session(key, pid, started.external_id) == SessionFound(started.id, True)
    assert await store.find_session(key, pid, None) is None
    assert await store.session_ended(started.id) is True
    assert await store.session_ended(10**9) is True  # gone
    assert await store.session_ended(other.id) is False


# --- API keys -----------------------------------------------------------------------------------


def prefix_of(key: str) -> str:
    return key.partition(".")[0]


async def key_row(db: Any, prefix: str) -> ApiKey:
    async with db() as s:
        return await s.scalar(select(ApiKey).where(ApiKey.prefix == prefix))


async def use_key(store: TurnStore, key: str, now: Any = None, key_hash: str | None = None) -> Any:
    now = now or utcnow()
    return await store.use_api_key(prefix_of(key), key_hash or sha256_hex(key), now, now - MINUTE)


async def test_use_api_key_joins_the_user_and_the_membership(store: TurnStore, db: Any, world: World) -> None:
    row = await key_row(db, prefix_of(world.key))
    assert await use_key(store, world.key, key_hash="not the key's") == ApiKeyRecord(
        row.id, world.team.id, world.user.id, row.key_hash, False, None, None, None, True,
        world.user.email, "admin",
    )  # fmt: skip
    assert await store.use_api_key("nosuchpx", "x", utcnow(), utcnow()) is None

    expires, revoked = utcnow() + timedelta(days=1), utcnow() - timedelta(hours=1)
    async with db() as s:
        outsider = await add_user(s, world.team)
        key = await add_key(s, world.team, outsider, read_only=True, expires_at=expires, revoked_at=revoked)
        await s.execute(delete(Membership).where(Membership.user_id == outsider.id))
        await s.execute(update(User).where(User.id == outsider.id).values(is_active=False))
        await s.commit()
    record = await use_key(store, key)
    assert (record.user_id, record.email, record.role, record.is_active) == (outsider.id, outsider.email, None, False)
    assert (record.read_only, record.expires_at, record.revoked_at) == (True, expires, revoked)
    assert (await key_row(db, prefix_of(key))).last_used_at is None  # not valid: no use recorded


async def test_use_api_key_records_a_valid_keys_use_once_a_minute(store: TurnStore, db: Any, world: World) -> None:
    prefix, t = prefix_of(world.key), utcnow()
    await use_key(store, world.key, t, key_hash="a wrong secret's hash")
    assert (await key_row(db, prefix)).last_used_at is None  # the presented key is not this one

    assert (await use_key(store, world.key, t)).last_used_at is None  # as it was: written now
    assert (await key_row(db, prefix)).last_used_at == t
    await use_key(store, world.key, t + MINUTE / 2)  # used within the minute: not written
    assert (await key_row(db, prefix)).last_used_at == t
    await use_key(store, world.key, t + 2 * MINUTE)  # a minute later: written
    assert (await key_row(db, prefix)).last_used_at == t + 2 * MINUTE

    async with db() as s:  # a revoked key's use is never recorded
        await s.execute(update(ApiKey).where(ApiKey.prefix == prefix).values(revoked_at=t))
        await s.commit()
    await use_key(store, world.key, t + 4 * MINUTE)
    assert (await key_row(db, prefix)).last_used_at == t + 2 * MINUTE


# --- watch_releases -----------------------------------------------------------------------------


async def release_by(how: str, place: Place, claim: Claim) -> None:
    if how == "release":
        await place.store.release(claim.id, claim.lease_until)
    elif how == "save":
        now = utcnow()
        update_ = SessionUpdate("active", now, [1], None, None, release=True)
        await place.store.save(claim.id, [NewMessage("ai", "reply")], update_, now)
    else:
        await place.store.reset(claim.id, place.ask(claim.participant_id, None), "pending-review")


@pytest.mark.parametrize("how", ["release", "save", "reset"])
async def test_a_waiter_wakes_when_the_lease_is_released(place: Place, db: Any, started: Claim, how: str) -> None:
    store, pid = place.store, started.participant_id
    holder = await store.claim(place.ask(pid, "holder"))
    waiter = place.ask(pid, "waiter", session_id=started.id)
    async with store.watch_releases(started.id) as released:
        assert await store.claim(waiter) is None  # busy: wait for the holder

        async def let_go() -> None:
            await asyncio.sleep(0.2)
            await release_by(how, place, holder)

        letting_go = asyncio.create_task(let_go())
        start = time.monotonic()
        await asyncio.wait_for(released.wait(5.0), 10)
        waited = time.monotonic() - start
        await letting_go
    if notifies(store):  # NOTIFY: woken by the release, well before the timeout (or 2 s re-look)
        assert 0.15 < waited < 1.0, waited
    if how == "reset":
        assert await store.session_ended(started.id) is True
        assert await store.claim(dataclasses.replace(waiter, now=utcnow())) is None
        assert (await store.claim(place.ask(pid, "to the new session"))).id != started.id
    else:
        claim = await store.claim(dataclasses.replace(waiter, now=utcnow()))
        assert claim is not None and claim.id == started.id


async def test_a_release_before_the_wait_is_not_missed(place: Place, started: Claim) -> None:
    """Entered before the failed claim, the watch sees a release that happens before wait()."""
    store, pid = place.store, started.participant_id
    holder = await store.claim(place.ask(pid, "holder"))
    assert holder is not None
    async with store.watch_releases(started.id) as released:
        assert await store.claim(place.ask(pid, "waiter", session_id=started.id)) is None
        await store.release(started.id, holder.lease_until)
        await asyncio.sleep(0.1)
        start = time.monotonic()
        await asyncio.wait_for(released.wait(5.0), 10)
        assert time.monotonic() - start < 1.0
    assert await store.claim(place.ask(pid, "waiter", session_id=started.id)) is not None


async def test_every_waiter_of_the_session_wakes(place: Place, started: Claim) -> None:
    store = place.store
    holder = await store.claim(place.ask(started.participant_id, "holder"))
    assert holder is not None

    async def wait() -> float:
        async with store.watch_releases(started.id) as released:
            await ready.wait()
            start = time.monotonic()
            await asyncio.wait_for(released.wait(5.0), 10)
            return time.monotonic() - start

    ready = asyncio.Event()
    waiters = [asyncio.create_task(wait()) for _ in range(2)]
    await asyncio.sleep(0.1)  # both are watching
    ready.set()
    await asyncio.sleep(0.1)
    await store.release(started.id, holder.lease_until)
    assert all(waited < 1.0 for waited in await asyncio.gather(*waiters))


async def test_a_wait_without_a_release_ends_at_its_timeout(place: Place, started: Claim) -> None:
    assert await place.store.claim(place.ask(started.participant_id, "holder")) is not None
    async with place.store.watch_releases(started.id) as released:
        start = time.monotonic()
        await asyncio.wait_for(released.wait(0.3), 5)
        assert time.monotonic() - start < 1.0


# --- widgets: turns without a user ------------------------------------------------------------


@dataclass
class WidgetPlace:
    """A chatbot's widget channel, where anonymous visitors (no user) claim."""

    store: TurnStore
    world: World
    channel_id: int

    def ask(self, participant_id: int | None, human: str = "hello", **changes: Any) -> ClaimRequest:
        now = utcnow()
        key = SessionKey(self.world.team.id, self.world.chatbot.id, self.channel_id, Platform.embedded_widget)
        return ClaimRequest(
            key=key, participant_id=participant_id, identifier=f"anon:{uuid.uuid4()}", user_id=None,
            now=now, lease_until=now + LEASE, human=human, **changes,
        )  # fmt: skip

    async def load(self, external_id: str | None, public_id: uuid.UUID | None = None) -> Any:
        return await self.store.load_widget_target(
            self.world.team.id, public_id or self.world.chatbot.public_id, None, self.channel_id, external_id
        )


@pytest.fixture
async def widget_place(store: TurnStore, db: Any, settings: Any, world: World) -> WidgetPlace:
    from tests.factories import add_widget

    return WidgetPlace(store, world, (await add_widget(db, settings, world)).channel_id)


async def test_an_anonymous_first_contact_creates_a_participant_without_a_user(
    widget_place: WidgetPlace, db: Any
) -> None:
    request = widget_place.ask(None, "hi from a web page")
    claim = await widget_place.store.claim(request)

    assert claim is not None and claim.status == "setup"
    participant = await db_get(db, Participant, claim.participant_id)
    assert (participant.platform, participant.identifier, participant.user_id) == (
        Platform.embedded_widget, request.identifier, None
    )
    [session] = await sessions_of(db, widget_place.world.team.id)
    assert (session.channel_id, session.platform, session.participant_id) == (
        widget_place.channel_id, Platform.embedded_widget, participant.id
    )
    assert await contents_of(db, claim.id) == ["hi from a web page"]
    [data] = await participant_data_of(db, participant.id)
    assert data.chatbot_id == widget_place.world.chatbot.id


async def test_two_anonymous_first_contacts_get_two_participants_and_two_sessions(
    widget_place: WidgetPlace, db: Any
) -> None:
    first, second = await asyncio.gather(
        widget_place.store.claim(widget_place.ask(None, "one")),
        widget_place.store.claim(widget_place.ask(None, "two")),
    )
    assert first is not None and second is not None
    assert first.participant_id != second.participant_id and first.id != second.id
    assert (await contents_of(db, first.id), await contents_of(db, second.id)) == (["one"], ["two"])


async def test_load_widget_target_is_the_widget_channel_and_the_named_sessions_participant(
    widget_place: WidgetPlace, place: Place, started: Claim
) -> None:
    claim = await widget_place.store.claim(widget_place.ask(None))
    assert claim is not None
    await widget_place.store.release(claim.id, claim.lease_until)

    target = await widget_place.load(claim.external_id)
    assert target is not None and target.bot is not None
    assert target.channel == ApiChannel(widget_place.channel_id, True, None)
    assert (target.head_id, target.participant_id) == (widget_place.world.chatbot.id, claim.participant_id)
    # No session named, or one that is not this widget's (an API session of the same chatbot,
    # an unknown id): the place has no participant.
    for external_id in (None, started.external_id, str(uuid.uuid4())):
        target = await widget_place.load(external_id)
        assert target is not None and target.participant_id is None, external_id
    # The claim of the named session, as the pipeline makes it.
    again = await widget_place.store.claim(widget_place.ask(claim.participant_id, external_id=claim.external_id))
    assert again is not None and again.id == claim.id


async def test_load_widget_target_of_another_chatbot_or_a_deleted_channel_is_none(
    widget_place: WidgetPlace, db: Any
) -> None:
    other = await add_chatbot(db, widget_place.world)
    assert await widget_place.load(None, other.public_id) is None
    await change(db, Channel, widget_place.channel_id, deleted=True)
    assert await widget_place.load(None) is None


async def db_get(db: Any, model: Any, row_id: int) -> Any:
    async with db() as s:
        return await s.get(model, row_id)
