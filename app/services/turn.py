"""One conversation turn of ``incoming_message`` (SPEC §3.2 steps 3–9, §5.2, §5.3, §3.4): every
decision of a turn, written once, over a store (``app.stores``: PostgreSQL or SQLAlchemy).

1. The chatbot, the answering version, its provider and the caller's place, in one read
   (404s: chatbot, version, impossible session id): a user chats as itself on the team's API
   channel; an embed key on its widget channel, as an anonymous participant made with each
   new session (a visitor continues only a session of that widget, by naming it).
2. The session's turn lease, claimed together with storing the human message (one statement on
   PostgreSQL), so nothing the user sent is lost; a busy session is waited for: in this process
   on a FIFO queue, across processes on the store's release signal. The participant, its data
   row and the session are created by the same claim on first contact.
3. Gates (allow-list, disabled channel) and ``/reset`` answer without the model; consent
   (§5.3) is asked for until given.
4. The model is called with no transaction and no connection held.
5. The reply is stored, the session updated and its lease released in one write.
"""

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from app.auth.principal import Principal
from app.config import Settings
from app.db import utcnow
from app.errors import BadRequest, NotFound, PermissionDenied, ServiceUnavailable
from app.llm import LlmClient, LlmConfig, LlmError
from app.models import HistoryMode, MessageRole, Platform, SessionStatus
from app.services import prompt
from app.services.chatbots import CHATBOT_NOT_FOUND, parse_public_id
from app.services.llm_config import llm_config_for
from app.services.replies import TurnInput, build_messages, complete, completion_metadata
from app.services.sessions import (
    SESSION_ENDED,
    SESSION_NOT_FOUND,
    local_place,
    session_id_can_exist,
)
from app.stores.base import (
    ApiChannel,
    BotConfig,
    Claim,
    ClaimRequest,
    NewMessage,
    ProviderConfig,
    SessionKey,
    SessionUpdate,
    StoredMessage,
    TurnStore,
    TurnTarget,
)
from app.stores.statements import CONSENT_PENDING

NO_USER = "A client-credentials token has no user to chat as; use a user credential."
NOT_ALLOWED_REPLY = "Sorry, you are not allowed to chat to this bot"
RESET_REPLY = "Conversation reset"
RESET_COMMAND = "/reset"
ANONYMOUS_PREFIX = "anon:"  # a widget visitor's participant identifier: anon:<uuid>
CONSENT_YES = "1"
SUMMARIZE_BATCH = 10  # older messages are folded into the summary ten at a time
BUSY = "Another message in this session is still being processed."
# A claim that loses a race to create the participant or the session starts again; a race is
# lost at most once per row, so this is never reached in practice.
MAX_CLAIM_ATTEMPTS = 5


@dataclass(frozen=True)
class TurnRequest:
    """One incoming message: who sends what to which chatbot, version and session."""

    principal: Principal
    experiment_id: str
    version: int | None
    message: str
    session_external_id: str | None


@dataclass
class TurnResult:
    response: str
    session_id: str
    attachments: list[dict[str, str]] = field(default_factory=list)


async def run_turn(
    store: TurnStore, llm: LlmClient, settings: Settings, request: TurnRequest
) -> TurnResult:
    principal, message = request.principal, request.message
    public_id = parse_public_id(request.experiment_id)
    if principal.kind == "embed_key":
        place = await _widget_place(store, request, public_id)
    else:
        place = await _user_place(store, request, public_id)
    target, channel = place.target, place.channel
    bot = target.bot
    assert bot is not None  # checked by the place
    gate = gate_reply(bot, channel, principal, place.identifier)
    is_reset = message.strip().lower() == RESET_COMMAND
    ask = ClaimRequest(
        key=SessionKey(principal.team_id, target.head_id, channel.id, place.platform),
        participant_id=target.participant_id,
        identifier=place.identifier,
        user_id=principal.user_id,
        now=utcnow(),
        lease_until=utcnow(),
        human=None if gate is not None or is_reset else message,
        consent=bot.has_consent,
        history_limit=prompt.history_read_limit(bot.history_mode, bot.max_history_length),
        external_id=request.session_external_id,
    )

    async def find_participant() -> int | None:  # after losing a race to create it
        if place.platform != Platform.api:
            return None  # an anonymous participant is new with each session: no race to lose
        again = await store.load_target(principal.team_id, public_id, None, place.identifier)
        return again.participant_id if again is not None else None

    async with contextlib.AsyncExitStack() as queue:
        claim = await _claim(store, settings, ask, queue, find_participant)
        ask = dataclasses.replace(ask, participant_id=claim.participant_id)
        released = False
        try:
            if gate is not None:
                return TurnResult(gate, claim.external_id)
            if is_reset:
                new_session = await store.reset(claim.id, ask, SessionStatus.pending_review)
                released = True
                return TurnResult(RESET_REPLY, new_session)
            result = await _answer(store, llm, settings, target.provider, bot, claim, message)
            released = True
            return result
        finally:
            if not released:
                # Retried, if it must be, until the lease would lapse by itself.
                await _clean_up(lambda: store.release(claim.id, claim.lease_until), claim.lease_until)


@dataclass(frozen=True)
class _Place:
    """Where a turn happens and as whom: the chatbot and version (``target``), the channel, and
    the participant's platform and identifier."""

    target: TurnTarget
    channel: ApiChannel
    platform: Platform
    identifier: str


async def _user_place(store: TurnStore, request: TurnRequest, public_id: uuid.UUID) -> _Place:
    """A user credential chats as its user (participant: platform api, identifier: the email)
    on the team's API channel (created on the team's first turn)."""
    principal = request.principal
    if principal.user_id is None or principal.user_email is None:
        raise PermissionDenied(NO_USER)
    target = await store.load_target(principal.team_id, public_id, request.version, principal.user_email)
    if target is None:
        raise NotFound(CHATBOT_NOT_FOUND)
    _check_target(request, target)
    channel = target.channel or await store.create_api_channel(principal.team_id)
    return _Place(target, channel, Platform.api, principal.user_email)


async def _widget_place(store: TurnStore, request: TurnRequest, public_id: uuid.UUID) -> _Place:
    """An embed key chats on its widget channel, with its chatbot only (any other is a 403,
    whether it exists or not), as an anonymous participant made with each new session: a
    visitor continues a conversation only by naming its session, which must be this widget's."""
    principal = request.principal
    assert principal.channel_id is not None
    named = request.session_external_id if session_id_can_exist(request.session_external_id) else None
    target = await store.load_widget_target(
        principal.team_id, public_id, request.version, principal.channel_id, named
    )
    if target is None or target.channel is None:
        raise PermissionDenied()
    _check_target(request, target)
    return _Place(target, target.channel, Platform.embedded_widget, f"{ANONYMOUS_PREFIX}{uuid.uuid4()}")


def _check_target(request: TurnRequest, target: TurnTarget) -> None:
    """The 403 and 404s of a found chatbot: one the credential may not reach, an unknown
    version, a named session that cannot be the caller's."""
    if not request.principal.may_reach(target.head_id):
        raise PermissionDenied()
    if target.bot is None:
        raise NotFound(f"Chatbot version {request.version} not found.")
    named = request.session_external_id
    if named is not None and (not session_id_can_exist(named) or target.participant_id is None):
        raise NotFound(SESSION_NOT_FOUND)  # cannot exist, or cannot be this participant's


async def _answer(
    store: TurnStore,
    llm: LlmClient,
    settings: Settings,
    provider: ProviderConfig | None,
    bot: BotConfig,
    claim: Claim,
    message: str,
) -> TurnResult:
    """Consent, the model call and the reply, under the claimed lease (released on success)."""
    session_id = claim.external_id
    user_text: str | None = message
    if bot.has_consent and claim.status in CONSENT_PENDING:
        consent_reply = await _consent_step(store, bot, claim, message)
        if consent_reply is not None:
            return TurnResult(consent_reply, session_id)
        # Consent given: answer the participant's first message (in the history), or the seed.
        user_text = bot.seed_message or None
    config = llm_config_for(bot, provider, settings.encryption_keys, session_id)

    summary, summary_until_id = claim.summary, claim.summary_until_id
    older: list[StoredMessage] = []
    limit = prompt.history_read_limit(bot.history_mode, bot.max_history_length)
    if bot.history_mode == HistoryMode.summarize and len(claim.history) == limit:
        older = await store.read_unsummarized(
            claim.id, claim.history[-1].id, claim.summary_until_id or 0, prompt.HISTORY_READ_LIMIT
        )
        if len(older) >= SUMMARIZE_BATCH:
            summary = await _summarize(llm, config, claim.summary, older)
            if summary != claim.summary:
                summary_until_id = older[-1].id
    turn = TurnInput(history=claim.history, older_unsummarized=older, user_text=user_text)
    messages = build_messages(bot, claim, claim.participant_data, turn, summary)
    completion = await complete(llm, messages, config, session_id)

    now = utcnow()
    versions_seen = claim.versions_seen
    if bot.version_number not in versions_seen:
        versions_seen = [*versions_seen, bot.version_number]
    reply = NewMessage(MessageRole.ai, completion.text, completion_metadata(completion),
                       bot.version_label)  # fmt: skip
    await store.save(
        claim.id,
        [reply],
        SessionUpdate(SessionStatus.active, now, versions_seen, summary, summary_until_id),
        now,
    )
    return TurnResult(completion.text, session_id)


async def _consent_step(store: TurnStore, bot: BotConfig, claim: Claim, message: str) -> str | None:
    """Conversational consent (SPEC §5.3): the consent prompt to send, or None once the
    participant has just consented (the lease is then still held for the answer). The first
    message is kept visible: it is answered after consent; the consent exchange itself is
    hidden from the model."""
    consent_prompt = f"{bot.consent_text}\n\n{bot.confirmation_text or ''}".rstrip()
    ask_again = NewMessage(MessageRole.ai, consent_prompt, version_label=bot.version_label,
                           hidden=True)  # fmt: skip
    now = utcnow()
    if claim.status == SessionStatus.setup:
        messages = [NewMessage(MessageRole.human, message), ask_again]
        status, reply = SessionStatus.pending, consent_prompt
    elif message.strip() == CONSENT_YES:
        messages = [NewMessage(MessageRole.human, message, hidden=True)]
        if bot.seed_message:
            messages.append(
                NewMessage(MessageRole.human, bot.seed_message, {"seed_message": True})
            )
        status, reply = SessionStatus.active, None
    else:
        messages = [NewMessage(MessageRole.human, message, hidden=True), ask_again]
        status, reply = SessionStatus.pending, consent_prompt
    update = SessionUpdate(status, now, claim.versions_seen, claim.summary,
                           claim.summary_until_id, release=reply is not None)  # fmt: skip
    await store.save(claim.id, messages, update, now)
    return reply


async def _claim(
    store: TurnStore,
    settings: Settings,
    ask: ClaimRequest,
    queue: contextlib.AsyncExitStack,
    find_participant: Callable[[], Awaitable[int | None]],
) -> Claim:
    """Claim the turn's session (created when there is none), waiting for a busy one behind the
    turns that came before it (``queue`` keeps its place until the turn ends)."""
    for _ in range(MAX_CLAIM_ATTEMPTS):
        now = utcnow()
        ask = dataclasses.replace(ask, now=now, lease_until=_lease_end(settings, now))
        claim = await store.claim(ask)
        if claim is not None:
            return claim
        found = await store.find_session(ask.key, ask.participant_id, ask.external_id)
        if found is None:
            if ask.external_id is not None:
                raise NotFound(SESSION_NOT_FOUND)
            # Another request created the participant meanwhile: claim with it.
            ask = dataclasses.replace(ask, participant_id=await find_participant())
            continue
        if found.ended:
            raise BadRequest(SESSION_ENDED)
        # Busy: take a ticket (arrival order, across processes), then wait for the session.
        waited = contextlib.AsyncExitStack()
        ticket = await store.take_ticket(found.id, utcnow())
        try:
            await waited.enter_async_context(local_place(found.id, ticket))
            claim = await _wait_and_claim(
                store, settings, dataclasses.replace(ask, session_id=found.id, ticket=ticket)
            )
        except BaseException:
            await waited.aclose()
            await _clean_up(lambda: store.drop_ticket(ticket), _lease_end(settings, utcnow()))
            raise
        if claim is not None:  # the claim used the ticket up
            queue.push_async_exit(waited)
            return claim
        await waited.aclose()
        await _clean_up(lambda: store.drop_ticket(ticket), _lease_end(settings, utcnow()))
        # The session ended while this turn waited (a /reset): the turn goes to the open one.
        if ask.external_id is not None:
            raise BadRequest(SESSION_ENDED)
    raise ServiceUnavailable(BUSY)


async def _wait_and_claim(store: TurnStore, settings: Settings, ask: ClaimRequest) -> Claim | None:
    """Claim the session by id once its holder lets go; None if it ended meanwhile."""
    assert ask.session_id is not None
    deadline = utcnow() + timedelta(seconds=settings.session_lease_seconds)
    async with store.watch_releases(ask.session_id) as released:
        while True:
            now = utcnow()
            claim = await store.claim(dataclasses.replace(ask, now=now,
                                                          lease_until=_lease_end(settings, now)))  # fmt: skip
            if claim is not None:
                return claim
            if await store.session_ended(ask.session_id):
                return None
            if now >= deadline:
                raise ServiceUnavailable(BUSY)
            await released.wait((deadline - now).total_seconds())


def _lease_end(settings: Settings, now: datetime) -> datetime:
    return now + timedelta(seconds=settings.session_lease_seconds)


# Clean-up writes being retried in the background (referenced so that they are not collected).
_RETRYING: set["asyncio.Task[None]"] = set()
CLEAN_UP_RETRY_SECONDS = 0.5


async def _clean_up(write: Callable[[], Awaitable[None]], until: datetime) -> None:
    """A clean-up write (a lease given back, a ticket dropped) that may fail with the database.
    It is then retried in the background until ``until``, when the lease or ticket lapses by
    itself: otherwise a PostgreSQL crash would leave the session of every turn in flight at
    that moment blocked for the whole lease (``session_lease_seconds``, 120 s) after the
    database is back, every later message of it waiting or answering 503."""
    try:
        await write()
    except Exception:
        task = asyncio.create_task(_retry_until(write, until))
        _RETRYING.add(task)
        task.add_done_callback(_RETRYING.discard)


async def _retry_until(write: Callable[[], Awaitable[None]], until: datetime) -> None:
    while utcnow() < until:
        await asyncio.sleep(CLEAN_UP_RETRY_SECONDS)
        try:
            await write()
            return
        except Exception:
            continue


async def _summarize(
    llm: LlmClient, config: LlmConfig, previous: str | None, older: list[StoredMessage]
) -> str | None:
    try:
        completion = await llm.complete(prompt.summary_request(previous, older), config)
    except LlmError:
        return previous  # keep the old summary; the next turn tries again
    return completion.text


def gate_reply(bot: BotConfig, channel: ApiChannel, principal: Principal, identifier: str) -> str | None:
    """The reply of a gate that stops the turn before anything is stored, if one does."""
    if not is_allowed(bot, identifier, principal):
        return NOT_ALLOWED_REPLY
    if not channel.enabled:
        return channel.disabled_message or ""
    return None


def is_allowed(bot: BotConfig, identifier: str, principal: Principal) -> bool:
    """An allow-list admits the identifiers on it and the team's members (user credentials
    always act as a member of the credential's team). An anonymous widget visitor is neither:
    a chatbot with an allow-list refuses its widget's visitors."""
    allowlist = bot.participant_allowlist or []
    return not allowlist or identifier in allowlist or principal.user_id is not None
