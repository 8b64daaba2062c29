"""The steady-state turn on PostgreSQL, run on the asyncpg driver directly.

SQLAlchemy spends ~200 µs of CPU on each statement, against ~60 µs for the driver itself, and a
turn's dozen statements were most of the worker's CPU (bench/RESULTS.md). This path runs the
common turn as hand-written SQL on the session's own driver connection: the open (or named)
session exists and is free, no consent is pending, the channel is enabled and the message is
not ``/reset``. Anything else returns ``None`` before anything is written, and the caller runs
the general path (``conversation.py``), which handles every case on every database and gives
every error its status. Both paths store the same rows; the suite runs against both.

Transactions are the driver's own (``conn.transaction()``); the session's connection goes back
to the pool (``db.commit()``) before the model is called.
"""

import contextlib
from datetime import timedelta
from typing import Any, NamedTuple

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.principal import Principal
from app.config import Settings
from app.db import driver_connection, utcnow
from app.llm import LlmClient
from app.models import Chatbot, HistoryMode, LlmProvider, MessageRole, SessionStatus
from app.services import prompt
from app.services.chatbots import parse_public_id
from app.services.llm_config import llm_config_for
from app.services.participants import ApiPlace
from app.services.replies import (
    RESET_COMMAND,
    TurnInput,
    TurnResult,
    build_messages,
    complete,
    completion_metadata,
    gate_reply,
)
from app.services.sessions import local_turn, session_id_can_exist, session_is_queued

# The answering version's bot config (published, numbered, or the head), its provider, and the
# head's id: the same resolution as services.chatbots.load_turn_chatbot.
_CHATBOT = """
SELECT h.id AS head_id, h.version_number AS head_number, v.id AS version_id,
       b.version_number, b.working_version_id, b.llm_model, b.temperature, b.max_tokens,
       b.system_prompt, b.history_mode, b.max_history_length, b.token_limit, b.source_material,
       b.participant_allowlist, b.consent_text, b.confirmation_text, b.seed_message,
       p.type AS provider_type, p.config AS provider_config
FROM chatbot h
LEFT JOIN chatbot v ON v.working_version_id = h.id AND (
    CASE WHEN $3::int IS NULL THEN v.is_published
         ELSE v.version_number = $3::int AND NOT v.is_archived END)
JOIN chatbot b ON b.id = COALESCE(v.id, h.id)
LEFT JOIN llm_provider p ON p.id = b.llm_provider_id
WHERE h.public_id = $1 AND h.team_id = $2 AND h.working_version_id IS NULL AND NOT h.is_archived
"""
_PLACE = """
SELECT c.id AS channel_id, c.enabled, c.disabled_message, p.id AS participant_id
FROM channel c
JOIN participant p ON p.team_id = $1 AND p.platform = 'api' AND p.identifier = $2
WHERE c.team_id = $1 AND c.chatbot_id IS NULL AND c.platform = 'api' AND NOT c.deleted
"""
_CLAIM = """
UPDATE chat_session SET lease_until = $6
WHERE team_id = $1 AND chatbot_id = $2 AND channel_id = $3 AND participant_id = $4
  AND ($7::varchar IS NULL OR external_id = $7::varchar)
  AND ended_at IS NULL AND (lease_until IS NULL OR lease_until < $5)
RETURNING id, external_id, status, state, versions_seen, summary
"""
_HISTORY = """
SELECT id, role, content, hidden FROM chat_message
WHERE session_id = $1 AND NOT hidden ORDER BY created_at DESC, id DESC LIMIT $2
"""
_PARTICIPANT_DATA = "SELECT data FROM participant_data WHERE participant_id = $1 AND chatbot_id = $2"
_INSERT_MESSAGE = """
INSERT INTO chat_message (session_id, role, content, metadata, version_label, hidden, created_at)
VALUES ($1, $2, $3, $4::jsonb, $5, false, $6)
"""
_FINISH = """
UPDATE chat_session SET status = $2, last_activity_at = $3, versions_seen = $4::jsonb,
       lease_until = NULL
WHERE id = $1
"""
_RELEASE = "UPDATE chat_session SET lease_until = NULL WHERE id = $1"


class _History(NamedTuple):
    id: int
    role: str
    content: str
    hidden: bool


class _Session(NamedTuple):
    id: int
    external_id: str
    state: dict[str, Any]
    summary: str | None
    versions_seen: list[int]


class _NotSteadyState(Exception):
    """Raised inside the driver transaction to roll it back and hand over to the general path."""


async def try_fast_turn(
    db: AsyncSession,
    llm: LlmClient,
    settings: Settings,
    principal: Principal,
    *,
    experiment_id: str,
    version: int | None,
    message: str,
    session_external_id: str | None,
) -> TurnResult | None:
    """The turn, or None when it is not the steady state (nothing written then)."""
    if principal.user_id is None or principal.user_email is None:
        return None
    if message.strip().lower() == RESET_COMMAND or not session_id_can_exist(session_external_id):
        return None
    async with contextlib.AsyncExitStack() as queue:
        conn = await driver_connection(db)
        try:
            async with conn.transaction():
                chatbot, place, chat, history, participant_data = await _begin_turn(
                    conn, queue, settings, principal, experiment_id, version, message,
                    session_external_id,
                )  # fmt: skip
        except _NotSteadyState:
            return None
        finally:
            await db.commit()  # the connection goes back to the pool while the model answers
        bot = _bot(chatbot)
        try:
            config = llm_config_for(bot, _provider(chatbot), settings.effective_secret_key,
                                    chat.external_id)  # fmt: skip
            turn = TurnInput(history=history, older_unsummarized=[], user_text=message)
            messages = build_messages(bot, chat, participant_data or {}, turn, chat.summary)
            completion = await complete(llm, messages, config, chat.external_id)
        except BaseException:
            await (await driver_connection(db)).execute(_RELEASE, chat.id)
            await db.commit()
            raise
        versions_seen = chat.versions_seen
        if bot.version_number not in versions_seen:
            versions_seen = [*versions_seen, bot.version_number]
        conn = await driver_connection(db)
        async with conn.transaction():
            await conn.execute(
                _INSERT_MESSAGE, chat.id, MessageRole.ai.value, completion.text,
                orjson.dumps(completion_metadata(completion)).decode(), bot.version_label, utcnow(),
            )  # fmt: skip
            await conn.execute(
                _FINISH, chat.id, SessionStatus.active.value, utcnow(),
                orjson.dumps(versions_seen).decode(),
            )  # fmt: skip
        await db.commit()
    return TurnResult(completion.text, chat.external_id)


async def _begin_turn(
    conn: Any,
    queue: contextlib.AsyncExitStack,
    settings: Settings,
    principal: Principal,
    experiment_id: str,
    version: int | None,
    message: str,
    session_external_id: str | None,
) -> tuple[Any, Any, _Session, list[_History], dict[str, Any] | None]:
    """Transaction one: find everything, claim the session, store the human message."""
    chatbot = await conn.fetchrow(
        _CHATBOT, parse_public_id(experiment_id), principal.team_id, version or None
    )
    place = await conn.fetchrow(_PLACE, principal.team_id, principal.user_email)
    if chatbot is None or place is None or not _version_found(chatbot, version):
        raise _NotSteadyState  # 404s, first contact: the general path
    bot = _bot(chatbot)
    api_place = ApiPlace(place["participant_id"], principal.user_email or "", place["channel_id"],
                         place["enabled"], place["disabled_message"])  # fmt: skip
    if gate_reply(bot, api_place, principal) is not None or bot.history_mode == HistoryMode.summarize:
        raise _NotSteadyState
    now = utcnow()
    claimed = await conn.fetchrow(
        _CLAIM, principal.team_id, chatbot["head_id"], place["channel_id"],
        place["participant_id"], now, now + timedelta(seconds=settings.session_lease_seconds),
        session_external_id,
    )  # fmt: skip
    if claimed is None or session_is_queued(claimed["id"]) or _consent_pending(bot, claimed):
        raise _NotSteadyState  # new, busy or named-but-not-found sessions; consent
    # Join this process's queue for the session now, with no await since the check above, so a
    # turn that arrives while this one runs queues behind it (see services.sessions).
    await queue.enter_async_context(local_turn(claimed["id"]))
    chat = _Session(claimed["id"], claimed["external_id"], claimed["state"], claimed["summary"],
                    claimed["versions_seen"])  # fmt: skip
    limit = prompt.history_read_limit(bot.history_mode, bot.max_history_length)
    history = [_History(*row) for row in await conn.fetch(_HISTORY, chat.id, limit)] if limit else []
    await conn.execute(_INSERT_MESSAGE, chat.id, MessageRole.human.value, message, "{}", None, now)
    participant_data = (
        await conn.fetchval(_PARTICIPANT_DATA, place["participant_id"], chatbot["head_id"])
        if prompt.needs_participant_data(bot.system_prompt)
        else None
    )
    return chatbot, place, chat, history, participant_data


def _version_found(row: Any, version: int | None) -> bool:
    return row["version_id"] is not None or version in (None, 0, row["head_number"])


def _bot(row: Any) -> Chatbot:
    """A transient Chatbot holding the answering version's bot config (never added to a session)."""
    return Chatbot(
        llm_model=row["llm_model"], temperature=row["temperature"], max_tokens=row["max_tokens"],
        system_prompt=row["system_prompt"], history_mode=row["history_mode"],
        max_history_length=row["max_history_length"], token_limit=row["token_limit"],
        source_material=row["source_material"], participant_allowlist=row["participant_allowlist"],
        consent_text=row["consent_text"], confirmation_text=row["confirmation_text"],
        seed_message=row["seed_message"], version_number=row["version_number"],
        working_version_id=row["working_version_id"],
    )  # fmt: skip


def _provider(row: Any) -> LlmProvider | None:
    if row["provider_type"] is None:
        return None
    return LlmProvider(type=row["provider_type"], config=row["provider_config"])


def _consent_pending(bot: Chatbot, claimed: Any) -> bool:
    return bot.has_consent and claimed["status"] in (SessionStatus.setup, SessionStatus.pending)
