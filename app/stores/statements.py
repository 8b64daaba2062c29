"""Statements both stores run, built once from the models' tables and enums, and the rules for
reading their rows. ``PostgresStore`` compiles them for asyncpg (and folds several into one
statement with CTEs); ``SqlAlchemyStore`` executes them on a SQLAlchemy connection.

Bind parameters have the same names everywhere: ``team_id``, ``chatbot_id``, ``channel_id``,
``participant_id``, ``external_id``, ``session_id``, ``now``, ``lease_until`` ...
"""

import uuid
from datetime import datetime
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import (
    BigInteger,
    Select,
    Boolean,
    Integer,
    String,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)

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
    SessionStatus,
    SessionWaiter,
    User,
)
from app.stores.base import (
    BOT_FIELDS,
    ApiChannel,
    BotConfig,
    Claim,
    ProviderConfig,
    StoredMessage,
    TurnTarget,
)

SESSION = ChatSession.__table__
_TIME = ChatSession.__table__.c.created_at.type
NOW = bindparam("now", type_=_TIME)
LEASE_UNTIL = bindparam("lease_until", type_=_TIME)
SESSION_ID = bindparam("session_id", type_=Integer)
WAITER = SessionWaiter.__table__
MESSAGE = ChatMessage.__table__
PARTICIPANT = Participant.__table__
PARTICIPANT_DATA = ParticipantData.__table__
CHANNEL = Channel.__table__
CHATBOT = Chatbot.__table__

# --- API keys ---------------------------------------------------------------------------------

KEY_WITH_MEMBERSHIP = (
    select(
        ApiKey.id, ApiKey.team_id, ApiKey.user_id, ApiKey.key_hash, ApiKey.read_only,
        ApiKey.revoked_at, ApiKey.expires_at, ApiKey.last_used_at,
        User.is_active, User.email, Membership.role,
    )  # fmt: skip
    .join(User, User.id == ApiKey.user_id)
    .outerjoin(
        Membership,
        (Membership.team_id == ApiKey.team_id) & (Membership.user_id == ApiKey.user_id),
    )
    .where(ApiKey.prefix == bindparam("p_prefix", type_=String))
)
# A key's use, recorded at most once a minute (SPEC §4.2), and only for the presented key when it
# is valid: its hash, not revoked or expired, its user an active member of its team.
RECORD_KEY_USE = (
    update(ApiKey)
    .where(
        ApiKey.prefix == bindparam("p_prefix", type_=String),
        ApiKey.key_hash == bindparam("p_key_hash", type_=String),
        ApiKey.revoked_at.is_(None),
        or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > NOW),
        or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < bindparam("not_since", type_=_TIME)),
        exists(
            select(Membership.id)
            .join(User, User.id == Membership.user_id)
            .where(
                Membership.team_id == ApiKey.team_id,
                Membership.user_id == ApiKey.user_id,
                User.is_active.is_(True),
            )
        ),
    )
    .values(last_used_at=NOW)
)


# --- The chatbot, its answering version, provider, and the user's place -----------------------

_head, _version, _bot = CHATBOT.alias("head"), CHATBOT.alias("version"), CHATBOT.alias("bot")
_VERSION = bindparam("version", type_=Integer)
_IDENTIFIER = bindparam("identifier", type_=String)


def _target(place: Callable[[Select[Any]], Select[Any]], participant_id: Any) -> Select[Any]:
    """The team's chatbot (head, not archived) by public id, its answering version and provider,
    and the turn's place: the channel and the participant (``place`` joins them)."""
    found = (
        select(
            _head.c.id.label("head_id"),
            _head.c.version_number.label("head_number"),
            _version.c.id.label("version_id"),
            *(_bot.c[name] for name in BOT_FIELDS),
            LlmProvider.type.label("provider_type"),
            LlmProvider.config.label("provider_config"),
            CHANNEL.c.id.label("channel_id"),
            CHANNEL.c.enabled.label("channel_enabled"),
            CHANNEL.c.disabled_message.label("channel_disabled_message"),
            participant_id.label("participant_id"),
        )
        .select_from(_head)
        .outerjoin(
            _version,
            and_(
                _version.c.working_version_id == _head.c.id,
                case(
                    (_VERSION.is_(None), _version.c.is_published),
                    else_=and_(_version.c.version_number == _VERSION, _version.c.is_archived.is_(False)),
                ),
            ),
        )
        .join(_bot, _bot.c.id == func.coalesce(_version.c.id, _head.c.id))
        .outerjoin(
            LlmProvider,
            LlmProvider.id == func.coalesce(_version.c.llm_provider_id, _head.c.llm_provider_id),
        )
    )
    return place(found).where(
        _head.c.public_id == bindparam("public_id"),
        _head.c.team_id == bindparam("p_team_id", type_=Integer),
        _head.c.working_version_id.is_(None),
        _head.c.is_archived.is_(False),
    )


# A user credential's place: the team's API channel (None before the team's first turn) and the
# user's participant (platform api, identifier: the user's email).
TARGET = _target(
    lambda found: found.outerjoin(
        CHANNEL,
        and_(
            CHANNEL.c.team_id == _head.c.team_id,
            CHANNEL.c.chatbot_id.is_(None),
            CHANNEL.c.platform == Platform.api,
            CHANNEL.c.deleted.is_(False),
        ),
    ).outerjoin(
        PARTICIPANT,
        and_(
            PARTICIPANT.c.team_id == _head.c.team_id,
            PARTICIPANT.c.platform == Platform.api,
            PARTICIPANT.c.identifier == _IDENTIFIER,
        ),
    ),
    PARTICIPANT.c.id,
)
# An embed key's place: its widget channel, which must be this chatbot's (no row otherwise), and
# the anonymous participant of the named session, if it is a session of this channel and chatbot
# (none named, or not one of them: no participant).
WIDGET_TARGET = _target(
    lambda found: found.join(
        CHANNEL,
        and_(
            CHANNEL.c.id == bindparam("p_channel_id", type_=Integer),
            CHANNEL.c.chatbot_id == _head.c.id,
            CHANNEL.c.deleted.is_(False),
        ),
    ).outerjoin(
        SESSION,
        and_(
            SESSION.c.external_id == bindparam("p_external_id", type_=String),
            SESSION.c.channel_id == CHANNEL.c.id,
            SESSION.c.chatbot_id == _head.c.id,
            SESSION.c.team_id == _head.c.team_id,
        ),
    ),
    SESSION.c.participant_id,
)


def target_from_row(row: Mapping[str, Any], version: int | None) -> TurnTarget:
    """SPEC §2.1: no version (or 0) → the published version, else the head; N → version N, or
    the head when N is the head's number (the draft); any other N does not exist."""
    found = row["version_id"] is not None or version is None or version == row["head_number"]
    provider = (
        ProviderConfig(row["provider_type"], row["provider_config"])
        if row["provider_type"] is not None
        else None
    )
    channel = (
        ApiChannel(row["channel_id"], row["channel_enabled"], row["channel_disabled_message"])
        if row["channel_id"] is not None
        else None
    )
    return TurnTarget(
        head_id=row["head_id"],
        head_number=row["head_number"],
        bot=BotConfig(*(row[name] for name in BOT_FIELDS)) if found else None,
        provider=provider,
        channel=channel,
        participant_id=row["participant_id"],
    )


def target_params(team_id: int, public_id: Any, version: int | None, identifier: str) -> dict[str, Any]:
    return {"p_team_id": team_id, "public_id": public_id, "version": version or None,
            "identifier": identifier}  # fmt: skip


def widget_target_params(
    team_id: int, public_id: Any, version: int | None, channel_id: int, external_id: str | None
) -> dict[str, Any]:
    return {"p_team_id": team_id, "public_id": public_id, "version": version or None,
            "p_channel_id": channel_id, "p_external_id": external_id}  # fmt: skip


FIND_API_CHANNEL = select(CHANNEL.c.id, CHANNEL.c.enabled, CHANNEL.c.disabled_message).where(
    CHANNEL.c.team_id == bindparam("p_team_id", type_=Integer),
    CHANNEL.c.chatbot_id.is_(None),
    CHANNEL.c.platform == Platform.api,
    CHANNEL.c.deleted.is_(False),
)

# --- Sessions -----------------------------------------------------------------------------------

SESSION_COLUMNS = (
    SESSION.c.id, SESSION.c.external_id, SESSION.c.participant_id, SESSION.c.status, SESSION.c.state,
    SESSION.c.versions_seen, SESSION.c.summary, SESSION.c.summary_until_id,
)  # fmt: skip
OWNER = (
    SESSION.c.team_id == bindparam("p_team_id", type_=Integer),
    SESSION.c.chatbot_id == bindparam("p_chatbot_id", type_=Integer),
    SESSION.c.channel_id == bindparam("p_channel_id", type_=Integer),
    SESSION.c.participant_id == bindparam("p_participant_id", type_=Integer),
)
_EXTERNAL_ID = bindparam("p_external_id", type_=String)
# The named session, or (no name given) the open one.
NAMED_OR_OPEN = or_(
    and_(_EXTERNAL_ID.is_(None), SESSION.c.ended_at.is_(None)),
    SESSION.c.external_id == _EXTERNAL_ID,
)
# No live ticket before the claimant's (``ticket``: its own, or NO_TICKET for a turn that has
# not waited, which then must not overtake any waiter).
_NO_EARLIER_WAITER = ~exists(
    select(WAITER.c.id).where(
        WAITER.c.session_id == SESSION.c.id,
        WAITER.c.id < bindparam("ticket", type_=BigInteger),
        WAITER.c.created_at > bindparam("waiters_since", type_=_TIME),
    )
)
_FREE = and_(
    SESSION.c.ended_at.is_(None),
    or_(SESSION.c.lease_until.is_(None), SESSION.c.lease_until < NOW),
    _NO_EARLIER_WAITER,
)
NO_TICKET = 2**62
TAKE_TICKET = (
    insert(WAITER)
    .values(session_id=SESSION_ID, created_at=NOW)
    .returning(WAITER.c.id)
)
DROP_TICKET = delete(WAITER).where(WAITER.c.id == bindparam("ticket", type_=BigInteger))


def claim_update(*criteria: Any) -> Any:
    """Take the lease of the session matching ``criteria`` if it is free, returning it."""
    return (
        update(SESSION)
        .where(*criteria, _FREE)
        .values(lease_until=LEASE_UNTIL)
        .returning(*SESSION_COLUMNS)
    )


CLAIM_BY_ID = claim_update(SESSION.c.id == SESSION_ID)
CLAIM_OWNER = claim_update(*OWNER, NAMED_OR_OPEN)
FIND_SESSION = select(SESSION.c.id, SESSION.c.ended_at).where(*OWNER, NAMED_OR_OPEN)
SESSION_ENDED_AT = select(SESSION.c.ended_at).where(SESSION.c.id == SESSION_ID)
# Only the caller's own lease (its end, ``held_until``): see TurnStore.release.
RELEASE = (
    update(SESSION)
    .where(SESSION.c.id == SESSION_ID, SESSION.c.lease_until == bindparam("held_until", type_=_TIME))
    .values(lease_until=None)
)
_RELEASE_FLAG = bindparam("release", type_=Boolean)
UPDATE_SESSION = (
    update(SESSION)
    .where(SESSION.c.id == SESSION_ID)
    .values(
        status=bindparam("status", type_=String),
        last_activity_at=bindparam("last_activity_at", type_=_TIME),
        versions_seen=bindparam("versions_seen"),
        summary=bindparam("summary", type_=String),
        summary_until_id=bindparam("summary_until_id", type_=Integer),
        lease_until=case((_RELEASE_FLAG, None), else_=SESSION.c.lease_until),
    )
)
END_SESSION = (
    update(SESSION)
    .where(SESSION.c.id == SESSION_ID)
    .values(status=bindparam("status", type_=String), ended_at=NOW, lease_until=None)
)


def owner_params(key: Any, participant_id: int, external_id: str | None) -> dict[str, Any]:
    return {
        "p_team_id": key.team_id,
        "p_chatbot_id": key.chatbot_id,
        "p_channel_id": key.channel_id,
        "p_participant_id": participant_id,
        "p_external_id": external_id,
    }


def claim_params(request: Any) -> dict[str, Any]:
    """The bind values of a ``ClaimRequest`` for every claim statement of both stores."""
    return {
        **owner_params(request.key, request.participant_id or 0, request.external_id),
        "p_platform": request.key.platform,
        "identifier": request.identifier,
        "user_id": request.user_id,
        "session_id": request.session_id,
        "now": request.now,
        "lease_until": request.lease_until,
        "human": request.human,
        "consent": request.consent,
        "history_limit": request.history_limit,
        "ticket": request.ticket or NO_TICKET,
        "waiters_since": request.now - (request.lease_until - request.now),
        "new_external_id": request.new_external_id,
        "new_participant_public_id": uuid.uuid4(),
    }


def reset_params(request: Any) -> dict[str, Any]:
    """A claim's bind values for the session that replaces it: a new id, no lease (the claim
    that created the old session may have used the request's ``new_external_id``)."""
    return {**claim_params(request), "new_external_id": str(uuid.uuid4()), "lease_until": None}


def new_session_values(key_params: Mapping[str, Any]) -> dict[str, Any]:
    """Column values of a new session (status ``setup``), from a claim's parameters."""
    return {
        "external_id": key_params["new_external_id"],
        "team_id": key_params["p_team_id"],
        "chatbot_id": key_params["p_chatbot_id"],
        "channel_id": key_params["p_channel_id"],
        "participant_id": key_params["p_participant_id"],
        "platform": key_params["p_platform"],
        "status": SessionStatus.setup,
        "state": {},
        "versions_seen": [],
        "created_at": key_params["now"],
        "last_activity_at": key_params["now"],
        "lease_until": key_params["lease_until"],
    }


CONSENT_PENDING = (SessionStatus.setup, SessionStatus.pending)


def human_is_stored(status: str, consent: bool) -> bool:
    """Whether a claim stores the human message: not while the bot still asks for consent."""
    return not (consent and status in CONSENT_PENDING)


def awaits_consent(status: Any) -> Any:
    """The SQL form of ``status in CONSENT_PENDING`` (no expanding IN: statements compile once)."""
    return or_(*(status == value for value in CONSENT_PENDING))

# --- Messages -----------------------------------------------------------------------------------

HISTORY_COLUMNS = (MESSAGE.c.id, MESSAGE.c.role, MESSAGE.c.content)
RECENT_HISTORY = (
    select(*HISTORY_COLUMNS)
    .where(MESSAGE.c.session_id == SESSION_ID, MESSAGE.c.hidden.is_(False))
    .order_by(MESSAGE.c.created_at.desc(), MESSAGE.c.id.desc())
    .limit(bindparam("history_limit", type_=Integer))
)
UNSUMMARIZED = (
    select(*HISTORY_COLUMNS)
    .where(
        MESSAGE.c.session_id == SESSION_ID,
        MESSAGE.c.id < bindparam("before_id", type_=Integer),
        MESSAGE.c.id > bindparam("after_id", type_=Integer),
        MESSAGE.c.hidden.is_(False),
    )
    .order_by(MESSAGE.c.id)
    .limit(bindparam("limit", type_=Integer))
)
PARTICIPANT_DATA_OF = select(PARTICIPANT_DATA.c.data).where(
    PARTICIPANT_DATA.c.participant_id == bindparam("p_participant_id", type_=Integer),
    PARTICIPANT_DATA.c.chatbot_id == bindparam("p_chatbot_id", type_=Integer),
)


def claim_from_row(
    session: Mapping[str, Any], history: list[StoredMessage], participant_data: Any, lease_until: datetime
) -> Claim:
    """A claim from a row of ``SESSION_COLUMNS`` and what was read with it (its lease ends at
    ``lease_until``, the claim request's)."""
    return Claim(
        id=session["id"],
        external_id=session["external_id"],
        participant_id=session["participant_id"],
        status=session["status"],
        state=session["state"],
        versions_seen=session["versions_seen"],
        summary=session["summary"],
        summary_until_id=session["summary_until_id"],
        history=history,
        participant_data=participant_data or {},
        lease_until=lease_until,
    )


def update_params(session_id: int, update: Any) -> dict[str, Any]:
    """The bind values of ``UPDATE_SESSION`` for a ``SessionUpdate``."""
    return {
        "session_id": session_id,
        "status": update.status,
        "last_activity_at": update.last_activity_at,
        "versions_seen": update.versions_seen,
        "summary": update.summary,
        "summary_until_id": update.summary_until_id,
        "release": update.release,
    }


def stored_messages(rows: Any) -> list[StoredMessage]:
    return [StoredMessage(row[0], row[1], row[2]) for row in rows]


def message_values(session_id: int, message: Any, now: Any) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "role": message.role,
        "content": message.content,
        "metadata": message.metadata,
        "version_label": message.version_label,
        "hidden": message.hidden,
        "created_at": now,
    }

