"""The steady-state turn on PostgreSQL, run on the asyncpg driver directly.

SQLAlchemy spends ~200 µs of CPU on each statement, against ~60 µs for the driver itself, and a
turn's dozen statements were most of the worker's CPU (bench/RESULTS.md). This path runs the
common turn as hand-written SQL on a plain asyncpg pool: the open (or named)
session exists and is free, no consent is pending, the channel is enabled and the message is
not ``/reset``. Anything else returns ``None`` before anything is written, and the caller runs
the general path (``conversation.py``), which handles every case on every database and gives
every error its status. Both paths store the same rows; the suite runs against both.

It runs on the driver pool (``app.db.driver``) in autocommit: each write is one statement, all
or nothing. Its connection goes back to the pool before the model is called.
"""

import contextlib
from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Any, NamedTuple

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.principal import Principal
from app.config import Settings
from app.db import driver, utcnow
from app.llm import LlmClient
from app.models import HistoryMode
from app.models.chatbot import BotVersionRules
from app.services import prompt
from app.services.chatbots import parse_public_id
from app.services.llm_config import llm_config_for
from app.services.participants import ApiPlace
from app.services.replies import (
    RESET_COMMAND,
    TurnInput,
    TurnRequest,
    TurnResult,
    build_messages,
    complete,
    completion_metadata,
    gate_reply,
)
from app.services.sessions import (
    local_turn,
    queued_sessions,
    session_id_can_exist,
    session_is_queued,
)

# 1. The answering version's bot config (published, numbered, or the head; the same resolution
# as services.chatbots.load_turn_chatbot), its provider, the head's id, and the user's place
# (the team's API channel and the participant). No row: not the steady state.
_CHATBOT_AND_PLACE = """
SELECT bot.*, place.* FROM (
    SELECT h.id AS head_id, h.version_number AS head_number, v.id AS version_id,
           b.version_number, b.working_version_id, b.llm_model, b.temperature, b.max_tokens,
           b.system_prompt, b.history_mode, b.max_history_length, b.token_limit,
           b.source_material, b.participant_allowlist, b.consent_text,
           p.type AS provider_type, p.config AS provider_config
    FROM chatbot h
    LEFT JOIN chatbot v ON v.working_version_id = h.id AND (
        CASE WHEN $3::int IS NULL THEN v.is_published
             ELSE v.version_number = $3::int AND NOT v.is_archived END)
    JOIN chatbot b ON b.id = COALESCE(v.id, h.id)
    LEFT JOIN llm_provider p ON p.id = b.llm_provider_id
    WHERE h.public_id = $1 AND h.team_id = $2 AND h.working_version_id IS NULL
      AND NOT h.is_archived
) bot CROSS JOIN (
    SELECT c.id AS channel_id, c.enabled, c.disabled_message, pt.id AS participant_id
    FROM channel c
    JOIN participant pt ON pt.team_id = $2 AND pt.platform = 'api' AND pt.identifier = $4
    WHERE c.team_id = $2 AND c.chatbot_id IS NULL AND c.platform = 'api' AND NOT c.deleted
) place
"""
# 2. One statement, so all or nothing without an explicit transaction: claim the session's
# lease, store the human message, and read the history (a CTE's snapshot: the new message is not
# in it) and the participant's data. Not claimed, so nothing written: a new, busy or unknown
# session, one a turn of this process is queued for ($10: those queue behind it, see
# services.sessions), or one still asking for consent ($11: the bot asks for it).
_CLAIM_STORE_READ = """
WITH claimed AS (
    UPDATE chat_session SET lease_until = $6
    WHERE team_id = $1 AND chatbot_id = $2 AND channel_id = $3 AND participant_id = $4
      AND ($7::varchar IS NULL OR external_id = $7::varchar)
      AND ended_at IS NULL AND (lease_until IS NULL OR lease_until < $5)
      AND id <> ALL($10::int[])
      AND NOT ($11::bool AND status IN ('setup', 'pending'))
    RETURNING id, external_id, state, versions_seen, summary
), human AS (
    INSERT INTO chat_message (session_id, role, content, metadata, version_label, hidden,
                              created_at)
    SELECT id, 'human', $8, '{}'::jsonb, NULL, false, $5 FROM claimed
)
SELECT c.id, c.external_id, c.state, c.versions_seen, c.summary,
    (SELECT coalesce(json_agg(json_build_array(m.id, m.role, m.content)
                              ORDER BY m.created_at DESC, m.id DESC), '[]')
     FROM (SELECT id, role, content, created_at FROM chat_message
           WHERE session_id = c.id AND NOT hidden
           ORDER BY created_at DESC, id DESC LIMIT $9) m) AS history,
    (SELECT data FROM participant_data WHERE participant_id = $4 AND chatbot_id = $2)
        AS participant_data
FROM claimed c
"""
# 3. One statement: store the reply, update the session, release the lease.
_FINISH = """
WITH ai AS (
    INSERT INTO chat_message (session_id, role, content, metadata, version_label, hidden,
                              created_at)
    VALUES ($1, 'ai', $2, $3::jsonb, $4, false, $5)
)
UPDATE chat_session SET status = 'active', last_activity_at = $5, versions_seen = $6::jsonb,
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


@dataclass(frozen=True, slots=True)
class _Bot(BotVersionRules):
    """The answering version's bot config as the first query reads it (what the steady-state
    turn uses of a Chatbot version; building a transient ORM Chatbot instead cost ~6 % of the
    worker's CPU per turn at concurrency 1)."""

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
    version_number: int
    working_version_id: int | None


_BOT_FIELDS = tuple(field.name for field in fields(_Bot))


class _Provider(NamedTuple):
    type: str
    config: dict[str, Any]


class _NotSteadyState(Exception):
    """Not the steady state, nothing written: hand over to the general path."""


async def try_fast_turn(
    db: AsyncSession, llm: LlmClient, settings: Settings, request: TurnRequest
) -> TurnResult | None:
    """The turn, or None when it is not the steady state (nothing written then)."""
    principal, message, version = request.principal, request.message, request.version
    session_external_id = request.session_external_id
    if principal.user_id is None or principal.user_email is None:
        return None
    if message.strip().lower() == RESET_COMMAND or not session_id_can_exist(session_external_id):
        return None
    async with contextlib.AsyncExitStack() as queue:
        try:
            async with driver(db) as conn:  # back to the pool before the model is called
                found = await conn.fetchrow(
                    _CHATBOT_AND_PLACE, parse_public_id(request.experiment_id), principal.team_id,
                    version or None, principal.user_email,
                )  # fmt: skip
                if found is None or not _version_found(found, version):
                    raise _NotSteadyState  # 404s and first contact: the general path
                bot = _Bot(*(found[name] for name in _BOT_FIELDS))
                chat, history, participant_data = await _claim_and_store(
                    conn, queue, settings, principal, found, bot, message, session_external_id
                )
        except _NotSteadyState:
            return None
        try:
            if db.in_transaction():
                # What the request wrote through SQLAlchemy (the key's last_used_at, see
                # auth.api_key_auth) commits now: no transaction is held across the call.
                await db.commit()
            config = llm_config_for(bot, _provider(found), settings.effective_secret_key,
                                    chat.external_id)  # fmt: skip
            turn = TurnInput(history=history, older_unsummarized=[], user_text=message)
            messages = build_messages(bot, chat, participant_data or {}, turn, chat.summary)
            completion = await complete(llm, messages, config, chat.external_id)
        except BaseException:
            async with driver(db) as conn:
                await conn.execute(_RELEASE, chat.id)
            raise
        versions_seen = chat.versions_seen
        if bot.version_number not in versions_seen:
            versions_seen = [*versions_seen, bot.version_number]
        async with driver(db) as conn:
            await conn.execute(
                _FINISH, chat.id, completion.text,
                orjson.dumps(completion_metadata(completion)).decode(), bot.version_label,
                utcnow(), orjson.dumps(versions_seen).decode(),
            )  # fmt: skip
    return TurnResult(completion.text, chat.external_id)


async def _claim_and_store(
    conn: Any,
    queue: contextlib.AsyncExitStack,
    settings: Settings,
    principal: Principal,
    found: Any,
    bot: _Bot,
    message: str,
    session_external_id: str | None,
) -> tuple[_Session, list[_History], dict[str, Any] | None]:
    """Claim the session and store the human message, or raise _NotSteadyState (nothing written)."""
    place = ApiPlace(found["participant_id"], principal.user_email or "", found["channel_id"],
                     found["enabled"], found["disabled_message"])  # fmt: skip
    if gate_reply(bot, place, principal) is not None or bot.history_mode == HistoryMode.summarize:
        raise _NotSteadyState  # gates and summaries: the general path
    now = utcnow()
    limit = prompt.history_read_limit(bot.history_mode, bot.max_history_length)
    row = await conn.fetchrow(
        _CLAIM_STORE_READ, principal.team_id, found["head_id"], found["channel_id"],
        found["participant_id"], now, now + timedelta(seconds=settings.session_lease_seconds),
        session_external_id, message, limit, queued_sessions(), bot.has_consent,
    )  # fmt: skip
    if row is None:
        raise _NotSteadyState
    if not session_is_queued(row["id"]):
        # Join this process's queue for the session now, with no await since the check above,
        # so a turn that arrives while this one runs queues behind it (see services.sessions).
        await queue.enter_async_context(local_turn(row["id"]))
    # Else a turn of this process queued for the session while the claim was in flight: the
    # lease is this turn's, so it goes first, and that turn waits for the lease.
    chat = _Session(row["id"], row["external_id"], row["state"], row["summary"],
                    row["versions_seen"])  # fmt: skip
    history = [_History(m[0], m[1], m[2], False) for m in row["history"]]
    return chat, history, row["participant_data"]


def _version_found(row: Any, version: int | None) -> bool:
    return row["version_id"] is not None or version in (None, 0, row["head_number"])


def _provider(row: Any) -> "_Provider | None":
    if row["provider_type"] is None:
        return None
    return _Provider(row["provider_type"], row["provider_config"])
