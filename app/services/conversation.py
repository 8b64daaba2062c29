"""One conversation turn of ``incoming_message`` (SPEC §3.2 steps 3–9, §5.2, §5.3, §3.4).

Two short transactions, none open while the model answers: (1) find the chatbot, version and
participant, find the session and claim its turn lease (one UPDATE ... RETURNING), read the
history and store the human message — committed before the model is called, so nothing the user
sent is lost; then the model is called with no transaction and no connection held; (2) store the
reply, update the session and release the lease in one commit.

This is the hot path: its statements are built once at import and history is read as plain rows.
"""

from typing import Any

from sqlalchemy import Row, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.db import has_driver, utcnow
from app.errors import PermissionDenied
from app.llm import LlmClient, LlmConfig, LlmError
from app.models import Chatbot, ChatMessage, ChatSession, HistoryMode, MessageRole, Platform
from app.models import SessionStatus
from app.services import prompt
from app.services.chatbots import load_turn_chatbot, parse_public_id
from app.services.fast_turn import try_fast_turn
from app.services.llm_config import llm_config_for
from app.services.participants import get_api_place, load_participant_data
from app.services.replies import (
    RESET_COMMAND,
    RESET_REPLY,
    TurnInput,
    TurnRequest,
    TurnResult,
    build_messages,
    complete,
    completion_metadata,
    gate_reply,
)
from app.services.sessions import SessionKey, end_session, open_session, session_turn

CONSENT_YES = "1"
SUMMARIZE_BATCH = 10  # older messages are folded into the summary ten at a time
# History is read as plain rows, not ORM objects: it is the largest read of a turn.
HISTORY_COLUMNS = (ChatMessage.id, ChatMessage.role, ChatMessage.content, ChatMessage.hidden)
_RECENT_HISTORY = (
    select(*HISTORY_COLUMNS)
    .where(ChatMessage.session_id == bindparam("session_id"), ChatMessage.hidden.is_(False))
    .order_by(ChatMessage.created_at.desc(), ChatMessage.id.desc())
    .limit(bindparam("limit"))
)
_UNSUMMARIZED = (
    select(*HISTORY_COLUMNS)
    .where(
        ChatMessage.session_id == bindparam("session_id"),
        ChatMessage.id < bindparam("before_id"),
        ChatMessage.id > bindparam("after_id"),
        ChatMessage.hidden.is_(False),
    )
    .order_by(ChatMessage.id)
    .limit(bindparam("limit"))
)
NO_USER = "A client-credentials token has no user to chat as; use a user credential."


async def handle_incoming_message(
    db: AsyncSession, llm: LlmClient, settings: Settings, request: TurnRequest
) -> TurnResult:
    principal, message = request.principal, request.message
    if principal.user_id is None or principal.user_email is None:
        raise PermissionDenied(NO_USER)
    if has_driver(db) and (fast := await try_fast_turn(db, llm, settings, request)):
        return fast
    found = await load_turn_chatbot(
        db, principal.team_id, parse_public_id(request.experiment_id), request.version
    )
    head, bot = found.head, found.bot
    place = await get_api_place(db, principal.team_id, principal.user_email, principal.user_id)
    key = SessionKey(principal.team_id, head.id, place.channel_id, place.participant_id, Platform.api)

    lease_seconds = settings.session_lease_seconds
    async with session_turn(db, key, request.session_external_id, lease_seconds) as lease:
        chat = lease.chat
        session_id = chat.external_id
        gate = gate_reply(bot, place, principal)
        if gate is not None:
            await _write_session(db, chat, lease.release_with({}))
            await db.commit()
            return TurnResult(gate, session_id)
        if message.strip().lower() == RESET_COMMAND:
            end_session(chat)
            lease.release_orm()
            await db.flush()
            new_chat = await open_session(db, key)
            await db.commit()
            return TurnResult(RESET_REPLY, new_chat.external_id)

        if bot.has_consent and chat.status in (SessionStatus.setup, SessionStatus.pending):
            consent_reply = await _consent_step(db, chat, bot, message)
            if consent_reply is not None:
                lease.release_orm()
                await db.commit()
                return TurnResult(consent_reply, session_id)
            # Consent given: answer the participant's first message (or the seed message).
            turn = await _read_turn_input(db, chat, bot, user_text=bot.seed_message or None)
            if bot.seed_message:
                await _insert_message(db, chat.id, MessageRole.human, bot.seed_message,
                                      {"seed_message": True})  # fmt: skip
        else:
            turn = await _read_turn_input(db, chat, bot, user_text=message)
            await _insert_message(db, chat.id, MessageRole.human, message)
        participant_data = (
            await load_participant_data(db, place.participant_id, head.id)
            if prompt.needs_participant_data(bot.system_prompt)
            else None
        )
        await db.commit()  # the human message is stored before the model is called
        config = llm_config_for(bot, found.provider, settings.effective_secret_key, session_id)

        summary = chat.summary
        if len(turn.older_unsummarized) >= SUMMARIZE_BATCH:
            summary = await _summarize(llm, config, chat.summary, turn.older_unsummarized)
        messages = build_messages(
            bot, chat, participant_data.data if participant_data else {}, turn, summary
        )
        completion = await complete(llm, messages, config, session_id)

        await _insert_message(db, chat.id, MessageRole.ai, completion.text,
                              completion_metadata(completion), version_label=bot.version_label)  # fmt: skip
        values: dict[str, Any] = {"status": SessionStatus.active, "last_activity_at": utcnow()}
        if bot.version_number not in chat.versions_seen:
            values["versions_seen"] = [*chat.versions_seen, bot.version_number]
        if summary != chat.summary:
            values["summary"] = summary
            values["summary_until_id"] = turn.older_unsummarized[-1].id
        await _write_session(db, chat, lease.release_with(values))
        await db.commit()
        return TurnResult(completion.text, session_id)


# Hot-path statements are built once: building a SQLAlchemy statement costs more CPU than
# executing a cached one.
_SESSION = ChatSession.__table__
_UPDATE_SESSION = update(_SESSION).where(_SESSION.c.id == bindparam("p_session_id"))
_INSERT_MESSAGE = insert(ChatMessage.__table__)


async def _write_session(db: AsyncSession, chat: ChatSession, values: dict[str, Any]) -> None:
    await db.execute(_UPDATE_SESSION.values(**values), {"p_session_id": chat.id})


async def _insert_message(
    db: AsyncSession,
    session_id: int,
    role: MessageRole,
    content: str,
    metadata: dict[str, Any] | None = None,
    version_label: str | None = None,
    hidden: bool = False,
) -> None:
    """A Core insert, executed at once: no ORM object is needed back."""
    await db.execute(
        _INSERT_MESSAGE,
        {
            "session_id": session_id,
            "role": role,
            "content": content,
            "metadata": metadata or {},
            "version_label": version_label,
            "hidden": hidden,
            "created_at": utcnow(),
        },
    )


async def _consent_step(
    db: AsyncSession, chat: ChatSession, bot: Chatbot, message: str
) -> str | None:
    """Conversational consent (SPEC §5.3). Returns the consent prompt to send, or None once
    the participant has just consented. The first message is kept visible: it is answered
    after consent; the consent exchange itself is hidden from the model."""
    consent_prompt = f"{bot.consent_text}\n\n{bot.confirmation_text or ''}".rstrip()
    if chat.status == SessionStatus.setup:
        await _insert_message(db, chat.id, MessageRole.human, message)
        chat.status = SessionStatus.pending
    elif message.strip() == CONSENT_YES:
        await _insert_message(db, chat.id, MessageRole.human, message, hidden=True)
        chat.status = SessionStatus.active
        return None
    else:
        await _insert_message(db, chat.id, MessageRole.human, message, hidden=True)
    await _insert_message(db, chat.id, MessageRole.ai, consent_prompt,
                          version_label=bot.version_label, hidden=True)  # fmt: skip
    chat.last_activity_at = utcnow()
    return consent_prompt


async def _read_turn_input(
    db: AsyncSession, chat: ChatSession, bot: Chatbot, user_text: str | None
) -> TurnInput:
    limit = prompt.history_read_limit(bot.history_mode, bot.max_history_length)
    params = {"session_id": chat.id, "limit": limit}
    history = list((await db.execute(_RECENT_HISTORY, params)).all()) if limit else []
    older: list[Row[Any]] = []
    if bot.history_mode == HistoryMode.summarize and len(history) == limit:
        older = list(
            (
                await db.execute(
                    _UNSUMMARIZED,
                    {
                        "session_id": chat.id,
                        "before_id": history[-1].id,
                        "after_id": chat.summary_until_id or 0,
                        "limit": prompt.HISTORY_READ_LIMIT,
                    },
                )
            ).all()
        )
    return TurnInput(history=history, older_unsummarized=older, user_text=user_text)


async def _summarize(
    llm: LlmClient, config: LlmConfig, previous: str | None, older: list[Row[Any]]
) -> str | None:
    try:
        completion = await llm.complete(prompt.summary_request(previous, older), config)
    except LlmError:
        return previous  # keep the old summary; the next turn tries again
    return completion.text


