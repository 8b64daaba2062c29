"""``POST /api/trigger_bot`` (SPEC §3.3): the chatbot is asked to write to a participant first.

The request only records the job: the participant and its data, the session and its state, and
a ``Delivery`` row (the durable outbox, SPEC §6), all in one transaction, so a trigger that was
answered 200 is never lost and one that failed left nothing behind (except the participant data
on a missing consent, as the SPEC says). The delivery worker (``app.services.delivery``) writes
the message and sends it.

An ``Idempotency-Key`` is stored on the delivery in the same transaction: a repeat finds it
and answers as the first request did, without a second delivery, even across a crash between
the commit and the response.
"""

import uuid
from dataclasses import dataclass
from typing import Any

from app.auth.principal import Principal
from app.auth.scopes import INTERACT_SCOPE
from app.channels.phone import to_e164
from app.db import utcnow
from app.errors import BadRequest, NotFound, PermissionDenied
from app.models import Platform, Role
from app.schemas import TriggerBotMessageRequest
from app.services.chatbots import CHATBOT_NOT_FOUND
from app.services.idempotency import MAX_KEY_LENGTH, request_fingerprint
from app.stores.base import TurnStore
from app.stores.idempotency import expiry_cutoff, release_expired_delivery_key
from app.stores.trigger import IdempotencyRace, NewDelivery, Replay, TriggerWriter, owner_params

NO_CONSENT = "User has not given consent"
KEY_REUSED = "This Idempotency-Key was already used with a different request."
# Platforms with nothing to push to: a trigger there is refused like a missing channel.
CANNOT_PUSH = frozenset({Platform.web, Platform.evaluations})
# Platforms whose participants must have consented on the platform itself before the bot may
# write to them (the consent is in the participant data's system metadata).
CONSENT_REQUIRED = frozenset({Platform.commcare_connect})
TRIGGER_ROLES = frozenset({Role.admin, Role.chatbot_admin})


def no_channel(platform: str) -> str:
    return f"Chatbot cannot send messages on the {platform} channel. Create the channel first."


def channel_disabled(platform: str) -> str:
    return f"The {platform} channel for this chatbot is disabled."


@dataclass(frozen=True)
class TriggerResult:
    session_id: str
    channel: str
    delivery_id: str

    def body(self) -> dict[str, str]:
        return {"session_id": self.session_id, "channel": self.channel, "delivery_id": self.delivery_id}


def normalise_identifier(platform: str, identifier: str) -> str:
    """One participant per person however the caller spelled the id (the body was validated:
    a WhatsApp number parses)."""
    if platform == Platform.whatsapp:
        return to_e164(identifier)
    if platform == Platform.commcare_connect:
        return identifier.strip().lower()
    if platform == Platform.api:  # a user's email, stored lower-cased as incoming_message's participant
        return identifier.strip().lower()
    return identifier


def is_team_machine(principal: Principal) -> bool:
    """A client-credentials token: it acts for the team itself, on its client's chatbots."""
    return principal.kind == "oauth" and principal.user_id is None and principal.chatbot_ids is not None


def authorize_trigger(principal: Principal) -> None:
    """Only a team's admins may push messages (SPEC §3.3 step 1): an embed key is public, a
    member may only chat. A team's client-credentials token may, with ``chatbots:interact``
    (SPEC §4.4), on its own chatbots only (checked once the chatbot is found)."""
    if (
        not principal.allows([INTERACT_SCOPE])
        or principal.kind == "embed_key"
        or (principal.role not in TRIGGER_ROLES and not is_team_machine(principal))
    ):
        raise PermissionDenied()


async def trigger_bot(
    store: TurnStore,
    principal: Principal,
    body: TriggerBotMessageRequest,
    idempotency_key: str | None,
    key_seconds: float,
) -> TriggerResult:
    """Steps 3–9 of SPEC §3.3 (the caller authorized and validated the request). A key first
    used ``key_seconds`` ago or longer has expired: its delivery lets go of it, and this request
    is a new trigger."""
    if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_KEY_LENGTH:
        raise BadRequest(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters.")
    platform = body.platform
    target = await store.load_trigger_target(principal.team_id, uuid.UUID(body.experiment), platform)
    if target is None:
        raise NotFound(CHATBOT_NOT_FOUND)
    if not principal.may_reach(target.head_id):  # a chatbot of the team, not of this credential
        raise PermissionDenied()
    if platform in CANNOT_PUSH or target.channel_id is None:
        raise BadRequest(no_channel(platform))
    if not target.channel_enabled:
        raise BadRequest(channel_disabled(platform))
    identifier = normalise_identifier(platform, body.identifier)
    # On `api` the conversation is the one incoming_message continues: the participant's session
    # on the team's API channel. The chatbot's own api channel is where it is pushed to.
    session_channel = target.channel_id
    if platform == Platform.api:
        session_channel = (await store.create_api_channel(principal.team_id)).id
    fingerprint = request_fingerprint("trigger_bot", body.model_dump(mode="json"))
    credential = principal.credential_id if idempotency_key is not None else None

    try:
        async with store.statements(transaction=True) as db:
            writer = TriggerWriter(db)
            now = utcnow()
            if idempotency_key is not None:
                replay = await writer.replay(principal.credential_id, idempotency_key)
                cutoff = expiry_cutoff(now, key_seconds)
                if replay is not None and replay.created_at > cutoff:
                    return _replayed(replay, fingerprint)
                if replay is not None:
                    await release_expired_delivery_key(db, principal.credential_id, idempotency_key, cutoff)
            participant_id = await writer.lock_participant(principal.team_id, platform, identifier, now)
            metadata = await writer.merge_participant_data(participant_id, target.head_id, body.participant_data)
            if platform in CONSENT_REQUIRED and metadata.get("consent") is not True:
                consent_missing = True  # commit the participant data, write nothing else
            else:
                consent_missing = False
                owner = owner_params(principal.team_id, target.head_id, session_channel,
                                     participant_id, platform)  # fmt: skip
                session_id, external_id = await _session(writer, owner, body, now)
                delivery_id = await writer.add_delivery(NewDelivery(
                    team_id=principal.team_id, session_id=session_id, channel_id=target.channel_id,
                    platform=platform, recipient=identifier, prompt_text=body.prompt_text,
                    message_text=body.message_text, now=now, idempotency_credential=credential,
                    idempotency_key=idempotency_key, request_hash=fingerprint if credential else None,
                ))  # fmt: skip
    except IdempotencyRace:
        # A concurrent repeat committed first (this transaction was rolled back): its answer.
        async with store.statements(read_only=True) as db:
            replay = await TriggerWriter(db).replay(principal.credential_id, idempotency_key or "")
        assert replay is not None
        return _replayed(replay, fingerprint)
    if consent_missing:
        raise BadRequest(NO_CONSENT)
    return TriggerResult(external_id, platform, str(delivery_id))


async def _session(
    writer: TriggerWriter, owner: dict[str, Any], body: TriggerBotMessageRequest, now: Any
) -> tuple[int, str]:
    """SPEC §3.3 step 8: the participant's open session (a new one with ``start_new_session``
    or when there is none), its state merged with ``session_data`` and ``page_context``."""
    session = await writer.open_session(owner)
    if session is not None and body.start_new_session:
        await writer.end_session(session.id, now)
        session = None
    changes = dict(body.session_data)
    if body.page_context is not None:
        changes["page_context"] = body.page_context
    if session is None:
        session = await writer.create_session(owner, changes, now)
    elif changes:
        await writer.set_state(session.id, {**session.state, **changes})
    return session.id, session.external_id


def _replayed(replay: Replay, fingerprint: str) -> TriggerResult:
    if replay.request_hash != fingerprint:
        raise BadRequest(KEY_REUSED)
    return TriggerResult(replay.session_id, replay.platform, str(replay.delivery_id))
