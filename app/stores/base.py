"""The store interface behind a conversation turn, and the frozen values that cross it.

The turn pipeline (``app.services.turn``) makes every decision of a turn; a store only reads and
writes rows. Two implementations keep the same contract (``tests/test_store_contract.py`` runs
the same suite against both):

- ``PostgresStore`` (``postgres_store.py``): SQLAlchemy Core statements compiled once for the
  asyncpg dialect and run on a plain asyncpg pool in autocommit, several writes folded into one
  statement with data-modifying CTEs (a steady-state turn is four round trips: key, target,
  claim, finish);
- ``SqlAlchemyStore`` (``sqlalchemy_store.py``): the same operations as short SQLAlchemy
  transactions, for SQLite (the embedded default) and any other database.

No ORM object crosses this interface, and no store method leaves a transaction or a connection
open when it returns: the pipeline calls the model between store calls.
"""

import uuid
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from app.stores.trigger import TriggerTarget


@dataclass(frozen=True, slots=True)
class BotConfig:
    """The bot config of the version that answers a turn (SPEC §5.1)."""

    version_number: int
    working_version_id: int | None  # None: the editable head (the unreleased draft)
    llm_model: str
    temperature: float
    max_tokens: int | None
    system_prompt: str
    history_mode: str
    max_history_length: int
    token_limit: int
    source_material: str
    participant_allowlist: list[Any]
    consent_text: str | None
    confirmation_text: str | None
    seed_message: str | None

    @property
    def version_label(self) -> str:
        """How replies are labelled with the version that wrote them: ``v3``, or
        ``v4-unreleased`` for the working version (the head)."""
        if self.working_version_id is None:
            return f"v{self.version_number}-unreleased"
        return f"v{self.version_number}"

    @property
    def has_consent(self) -> bool:
        return bool(self.consent_text)


BOT_FIELDS = tuple(f.name for f in fields(BotConfig))


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """An LLM provider row: its type and its config (secrets still encrypted)."""

    type: str
    config: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ApiChannel:
    """The channel a turn happens on: the team's API channel, where user credentials chat, or
    an embed key's widget channel."""

    id: int
    enabled: bool
    disabled_message: str | None


@dataclass(frozen=True, slots=True)
class TurnTarget:
    """A team's chatbot as one turn needs it, read in one query."""

    head_id: int  # the editable head: sessions, participants and channels point at it
    head_number: int  # the head's version_number: the draft's number
    bot: BotConfig | None  # the answering version's config; None: no such version
    provider: ProviderConfig | None  # the answering version's provider, else the head's
    channel: ApiChannel | None  # None before the team's first turn
    participant_id: int | None  # the identifier's participant; None before its first turn


@dataclass(frozen=True, slots=True)
class SessionKey:
    """Whose session: one chatbot (head), channel and participant of a team."""

    team_id: int
    chatbot_id: int
    channel_id: int
    platform: str


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """Take a session's turn lease and store the human message, in one go.

    The session claimed is ``session_id`` if given (a turn that waited for it), else the named
    session (``external_id``), else the participant's open session — created, with the
    participant (``participant_id`` None) and its data row, when there is none. It is claimed
    only if no turn holds its lease and no turn waiting for it has an earlier ticket than
    ``ticket`` (for a turn without one: any live ticket; it must not overtake them).
    ``human`` is stored unless the bot asks for consent (``consent``) and the session has not
    given it yet (status ``setup``/``pending``): the pipeline's consent step stores it then.
    """

    key: SessionKey
    participant_id: int | None
    identifier: str
    user_id: int | None
    now: datetime
    lease_until: datetime
    human: str | None = None
    consent: bool = False
    history_limit: int = 0
    external_id: str | None = None
    session_id: int | None = None
    ticket: int | None = None  # the waiting turn's ticket (``take_ticket``), dropped on a claim
    new_external_id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A stored message as history needs it."""

    id: int
    role: str
    content: str
    hidden: bool = False


@dataclass(frozen=True, slots=True)
class Claim:
    """A session whose lease the caller now holds, as it was before the human message was
    stored: its history (visible messages, newest first, at most ``history_limit``) and the
    participant's data for this chatbot."""

    id: int
    external_id: str
    participant_id: int
    status: str
    state: dict[str, Any]
    versions_seen: list[int]
    summary: str | None
    summary_until_id: int | None
    history: list[StoredMessage]
    participant_data: dict[str, Any]
    # The lease taken (the request's ``lease_until``): what ``release`` gives back, and only if
    # the session still holds this one.
    lease_until: datetime


@dataclass(frozen=True, slots=True)
class SessionFound:
    """A session found without claiming it (after a claim failed)."""

    id: int
    ended: bool


@dataclass(frozen=True, slots=True)
class NewMessage:
    role: str
    content: str
    metadata: dict[str, Any] = field(default_factory=dict)
    version_label: str | None = None
    hidden: bool = False


@dataclass(frozen=True, slots=True)
class SessionUpdate:
    """The session's row after a turn's writes; ``release`` gives its lease back."""

    status: str
    last_activity_at: datetime
    versions_seen: list[int]
    summary: str | None
    summary_until_id: int | None
    release: bool = True


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """An API key with its user and the user's role in the key's team (None: not a member)."""

    id: int
    team_id: int
    user_id: int
    key_hash: str
    read_only: bool
    revoked_at: datetime | None
    expires_at: datetime | None
    last_used_at: datetime | None
    is_active: bool
    email: str
    role: str | None


class Executor(Protocol):
    """Runs SQLAlchemy Core statements that are module constants (``PostgresStore`` compiles
    each once, by identity) with named parameters, on one connection."""

    dialect: str

    async def first(self, statement: Any, params: Mapping[str, Any]) -> Mapping[str, Any] | None: ...

    async def all(self, statement: Any, params: Mapping[str, Any]) -> list[Mapping[str, Any]]: ...

    async def execute(self, statement: Any, params: Mapping[str, Any]) -> None: ...


class ReleaseSignal(Protocol):
    async def wait(self, timeout: float) -> None: ...


class TurnStore(Protocol):
    async def use_api_key(
        self, prefix: str, key_hash: str, now: datetime, not_since: datetime
    ) -> ApiKeyRecord | None:
        """The key with this prefix, its user and membership (read without a lock); and its use
        recorded (``last_used_at = now``) if ``key_hash`` is the key's, the key is valid and it
        was not used since ``not_since``. On PostgreSQL both in one round trip."""

    async def load_target(
        self, team_id: int, public_id: uuid.UUID, version: int | None, identifier: str
    ) -> TurnTarget | None:
        """The team's chatbot (not archived) by public id, or None. ``version`` None or 0: the
        published version, else the head; N: version N (not archived), or the head when N is
        its number. The place is the team's API channel and the participant (platform api)."""

    async def load_widget_target(
        self, team_id: int, public_id: uuid.UUID, version: int | None, channel_id: int,
        external_id: str | None,
    ) -> TurnTarget | None:
        """As ``load_target``, for an embed key: the place is its widget channel (None when the
        channel is not this chatbot's, or gone) and the participant of the named session
        (``external_id``) when that is a session of this channel; None otherwise."""

    async def create_api_channel(self, team_id: int) -> ApiChannel:
        """The team's API channel, created if none (a concurrent creator's is returned)."""

    async def claim(self, request: ClaimRequest) -> Claim | None:
        """See ``ClaimRequest``. None: nothing claimed and nothing written (the session is
        busy, queued here, ended, unknown, or another request created it concurrently)."""

    async def take_ticket(self, session_id: int, now: datetime) -> int:
        """A place in the session's queue of waiting turns (lower tickets claim first)."""

    async def drop_ticket(self, ticket: int) -> None:
        """Leave the queue without claiming (the session ended, or the wait was given up)."""

    async def find_session(
        self, key: SessionKey, participant_id: int | None, external_id: str | None
    ) -> SessionFound | None:
        """The named session of this owner, or the open one; None if there is none."""

    async def session_ended(self, session_id: int) -> bool:
        """Whether the session has ended (or is gone)."""

    def watch_releases(self, session_id: int) -> AbstractAsyncContextManager["ReleaseSignal"]:
        """While inside, the signal's ``wait`` returns once the session's lease was released
        since the last wait (or after its timeout). Enter it before trying to claim, so that a
        release between a failed claim and the wait is not missed."""

    async def read_unsummarized(
        self, session_id: int, before_id: int, after_id: int, limit: int
    ) -> list[StoredMessage]:
        """Visible messages with ``after_id < id < before_id``, oldest first."""

    async def save(
        self, session_id: int, messages: Sequence[NewMessage], update: SessionUpdate, now: datetime
    ) -> None:
        """Store the messages (in order) and write the session row, in one transaction."""

    async def release(self, session_id: int, lease_until: datetime) -> None:
        """Give the session's lease back, nothing else written, if it is still the lease that
        ended at ``lease_until`` (the caller's): a release retried after the database came back
        must not free a lease another turn has taken since."""

    async def reset(self, session_id: int, request: ClaimRequest, ended_status: str) -> str:
        """End the (claimed) session, release it and open a new one for the same owner;
        returns the new session's external id."""

    async def load_trigger_target(
        self, team_id: int, public_id: uuid.UUID, platform: str
    ) -> "TriggerTarget | None":
        """The team's chatbot (head, not archived) and its channel on ``platform``, or None."""

    def statements(
        self, *, transaction: bool = False, read_only: bool = False
    ) -> AbstractAsyncContextManager[Executor]:
        """A connection for other work than a turn's (a trigger's writes, the delivery worker):
        each statement atomic by itself (autocommit on PostgreSQL), or with ``transaction`` all
        of them committed when the block ends and rolled back when it raises. ``read_only``:
        it only reads (on SQLite it then takes no write lock)."""
