"""One claimed delivery, from the outbox to the participant (SPEC §5.5, §6).

1. What it needs, read in one query: channel, session, participant and its data, the chatbot,
   the message if it was already written.
2. Skipped (``last_error`` says why) when, since the trigger, the channel was disabled or
   deleted, the chatbot archived, or the participant's consent withdrawn (or, where the
   platform requires consent, not given).
3. The message, written once: ``message_text`` as it is, or the chatbot's model following
   ``prompt_text``; stored as an AI message of the session and linked to the delivery in one
   transaction, before the first send. A retry sends the stored text; it never writes again.
4. Sent by the platform's sender; the outcome recorded at once: sent, retried later, failed,
   or skipped (the participant blocked the bot: their consent is recorded as withdrawn).
"""

import logging
import random
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, String, Text, and_, bindparam, func, insert, select, update

from app.channels import outbox
from app.channels.base import OutboundMessage, SendContext, SendFailed, Sender
from app.channels.outbox import DueDelivery
from app.config import Settings
from app.crypto import decrypt_config
from app.db import utcnow
from app.errors import DomainError
from app.llm import LlmClient
from app.models import Chatbot, DeliveryStatus, MessageRole
from app.services import bot_message
from app.services.llm_config import llm_config_for
from app.services.replies import complete, completion_metadata
from app.services.trigger import CONSENT_REQUIRED, NO_CONSENT, channel_disabled
from app.stores import statements as st
from app.stores.base import TurnStore
from app.stores.trigger import D

log = logging.getLogger(__name__)
S, P, PD, CH, M = st.SESSION, st.PARTICIPANT, st.PARTICIPANT_DATA, st.CHANNEL, st.MESSAGE
CHATBOT_ARCHIVED = "The chatbot was archived."
CONSENT_WITHDRAWN = "The participant withdrew consent"

_inbound = M.alias("inbound")
_last_inbound = (
    select(func.max(_inbound.c.created_at))
    .where(_inbound.c.session_id == S.c.id, _inbound.c.role == MessageRole.human)
    .scalar_subquery()
)
CONTEXT = (
    select(
        CH.c.config.label("channel_config"), CH.c.enabled.label("channel_enabled"),
        CH.c.deleted.label("channel_deleted"), S.c.external_id.label("session_external_id"),
        S.c.state, S.c.chatbot_id, Chatbot.public_id.label("chatbot_public_id"),
        Chatbot.is_archived, P.c.id.label("participant_row_id"),
        P.c.public_id.label("participant_public_id"), P.c.identifier,
        PD.c.data.label("participant_data"), PD.c.system_metadata, M.c.content.label("message"),
        _last_inbound.label("last_inbound_at"),
    )  # fmt: skip
    .select_from(D)
    .join(CH, CH.c.id == D.c.channel_id)
    .join(S, S.c.id == D.c.session_id)
    .join(Chatbot, Chatbot.id == S.c.chatbot_id)
    .join(P, P.c.id == S.c.participant_id)
    .outerjoin(PD, and_(PD.c.participant_id == P.c.id, PD.c.chatbot_id == S.c.chatbot_id))
    .outerjoin(M, M.c.id == D.c.message_id)
    .where(D.c.id == bindparam("delivery_id"))
)
STORE_MESSAGE = (
    insert(M)
    .values(
        session_id=bindparam("p_session_id", type_=Integer), role=MessageRole.ai,
        content=bindparam("p_content", type_=Text), metadata=bindparam("p_metadata", type_=M.c.metadata.type),
        version_label=bindparam("p_version_label", type_=String), hidden=False,
        created_at=bindparam("now", type_=M.c.created_at.type),
    )  # fmt: skip
    .returning(M.c.id)
)
LINK_MESSAGE = (
    update(D)
    .where(D.c.id == bindparam("delivery_id"), D.c.message_id.is_(None))
    .values(message_id=bindparam("p_message_id", type_=D.c.message_id.type))
    .returning(D.c.id)
)
TOUCH_SESSION = (
    update(S).where(S.c.id == st.SESSION_ID).values(last_activity_at=bindparam("now", type_=S.c.last_activity_at.type))
)
LINKED_TEXT = select(M.c.content).join(D, D.c.message_id == M.c.id).where(D.c.id == bindparam("delivery_id"))
WITHDRAW_CONSENT = (
    update(PD)
    .where(PD.c.participant_id == bindparam("p_participant_id", type_=Integer),
           PD.c.chatbot_id == bindparam("p_chatbot_id", type_=Integer))
    .values(system_metadata=bindparam("p_metadata", type_=PD.c.system_metadata.type))
)  # fmt: skip


@dataclass(frozen=True)
class Deps:
    """What processing a delivery uses: the database, the model, the senders."""

    store: TurnStore
    llm: LlmClient
    settings: Settings
    send_context: SendContext
    senders: dict[str, Sender]
    rng: random.Random


async def process(deps: Deps, delivery: DueDelivery) -> str:
    """Take one claimed delivery as far as it goes now; returns its new status."""
    store, now = deps.store, utcnow()
    async with store.statements(read_only=True) as db:
        context = await db.first(CONTEXT, {"delivery_id": delivery.id})
    if context is None:  # its session or channel was deleted: nothing left to deliver
        return DeliveryStatus.skipped
    reason = skip_reason(delivery.platform, context)
    if reason is not None:
        await outbox.record_skipped(store, delivery.id, reason, now)
        return DeliveryStatus.skipped
    try:
        text = context["message"]
        if text is None:
            text = await _write_once(deps, delivery, context)
        message = OutboundMessage(
            delivery_id=str(delivery.public_id),
            session_id=context["session_external_id"],
            chatbot_id=str(context["chatbot_public_id"]),
            participant_id=str(context["participant_public_id"]),
            recipient=delivery.recipient,
            text=text,
            created_at=now,
            session_state=context["state"] or {},
            last_inbound_at=context["last_inbound_at"],
            participant_metadata=context["system_metadata"] or {},
        )
        config = decrypt_config(context["channel_config"] or {}, deps.settings.encryption_keys)
        sender = deps.senders.get(delivery.platform)
        if sender is None:
            raise SendFailed(f"No sender for the {delivery.platform} platform.", permanent=True)
        result = await sender.send(deps.send_context, message, config)
    except SendFailed as failure:
        if failure.consent_withdrawn:
            await _withdraw_consent(store, context)
            await outbox.record_skipped(store, delivery.id, f"{CONSENT_WITHDRAWN}: {failure.reason}", utcnow())
            return DeliveryStatus.skipped
        return await _failed(deps, delivery, failure)
    except DomainError as exc:  # the model could not write the message: try again later
        return await _failed(deps, delivery, SendFailed(exc.detail, permanent=False))
    await outbox.record_sent(store, delivery.id, result.provider_message_id, utcnow())
    return DeliveryStatus.sent


def skip_reason(platform: str, context: Any) -> str | None:
    if not context["channel_enabled"] or context["channel_deleted"]:
        return channel_disabled(platform)
    if context["is_archived"]:
        return CHATBOT_ARCHIVED
    consent = (context["system_metadata"] or {}).get("consent")
    if consent is False:
        return CONSENT_WITHDRAWN + "."
    if platform in CONSENT_REQUIRED and consent is not True:
        return NO_CONSENT + "."
    return None


async def _failed(deps: Deps, delivery: DueDelivery, failure: SendFailed) -> str:
    return await outbox.record_failure(
        deps.store, delivery, failure, utcnow(),
        max_attempts=deps.settings.delivery_max_attempts,
        backoff_seconds=deps.settings.delivery_backoff_seconds,
        rng=deps.rng,
    )  # fmt: skip


async def _write_once(deps: Deps, delivery: DueDelivery, context: Any) -> str:
    """The message's text, stored as the session's AI message and linked to the delivery. Two
    workers that both wrote one (a lease that expired mid-write) store only the first: the
    second's link finds the delivery linked, rolls its message back and sends the first's text."""
    metadata: dict[str, Any] = {"delivery_id": str(delivery.public_id)}
    version_label = None
    if delivery.message_text is not None:
        text = delivery.message_text
    else:
        text, version_label, written = await _write(deps, delivery, context)
        metadata.update(written)
    now = utcnow()
    try:
        async with deps.store.statements(transaction=True) as db:
            stored = await db.first(STORE_MESSAGE, {
                "p_session_id": delivery.session_id, "p_content": text, "p_metadata": metadata,
                "p_version_label": version_label, "now": now,
            })  # fmt: skip
            assert stored is not None
            # Waits for a concurrent writer's link (the row lock), then sees it: nothing to do.
            if await db.first(LINK_MESSAGE, {"delivery_id": delivery.id, "p_message_id": stored["id"]}) is None:
                raise _AlreadyWritten()  # rolls this message back
            await db.execute(TOUCH_SESSION, {"session_id": delivery.session_id, "now": now})
    except _AlreadyWritten:
        async with deps.store.statements(read_only=True) as db:
            linked = await db.first(LINKED_TEXT, {"delivery_id": delivery.id})
        assert linked is not None
        return linked["content"]
    return text


class _AlreadyWritten(Exception):
    pass


async def _write(deps: Deps, delivery: DueDelivery, context: Any) -> tuple[str, str, dict[str, Any]]:
    """The chatbot's model follows the instruction (SPEC §5.5): its published version."""
    target = await deps.store.load_target(
        delivery.team_id, context["chatbot_public_id"], None, context["identifier"]
    )
    if target is None or target.bot is None:
        raise SendFailed(CHATBOT_ARCHIVED, permanent=True)
    bot, session_id = target.bot, context["session_external_id"]
    async with deps.store.statements(read_only=True) as db:
        rows = await db.all(st.RECENT_HISTORY, {"session_id": delivery.session_id,
                                                "history_limit": bot_message.HISTORY_MESSAGES})  # fmt: skip
    history = st.stored_messages([tuple(row.values()) for row in rows])
    config = llm_config_for(bot, target.provider, deps.settings.encryption_keys, session_id)
    messages = bot_message.message_request(
        bot, delivery.prompt_text or "", history, context["participant_data"] or {}, context["state"] or {}
    )
    completion = await complete(deps.llm, messages, config, session_id)
    return completion.text, bot.version_label, completion_metadata(completion)


async def _withdraw_consent(store: TurnStore, context: Any) -> None:
    """The participant blocked the bot: later deliveries to them are skipped without a send."""
    metadata = {**(context["system_metadata"] or {}), "consent": False}
    async with store.statements() as db:
        await db.execute(WITHDRAW_CONSENT, {"p_participant_id": context["participant_row_id"],
                                            "p_chatbot_id": context["chatbot_id"], "p_metadata": metadata})  # fmt: skip
