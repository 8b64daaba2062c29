"""``POST /api/trigger_bot`` (the seed's first endpoint) and ``GET /api/deliveries/{id}``."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Request

from app.auth.dependencies import TeamPrincipal
from app.auth.principal import Principal
from app.auth.rate_limit_http import count_team_request
from app.config import Settings
from app.errors import PermissionDenied
from app.routers.body import json_body, nul_characters
from app.routers.deps import SessionmakerDep, SettingsDep, StoreDep
from app.routers.openapi_docs import error_responses, request_body
from app.schemas import DeliveryStatusResponse, TriggerBotMessageRequest, TriggerBotResponse, trigger_errors
from app.services.deliveries import delivery_status
from app.services.trigger import TRIGGER_ROLES, authorize_trigger, trigger_bot

router = APIRouter(tags=["Channels"])


def _check_trigger(body: TriggerBotMessageRequest, settings: Settings) -> dict[str, list[str]]:
    return trigger_errors(body, settings.max_message_chars) or nul_characters(body.model_dump())


async def trigger_principal(request: Request, principal: TeamPrincipal) -> Principal:
    """Authenticated and authorized before the body is read (SPEC §3.3: 401/403, then 400),
    then counted against the team's rate limit (SPEC §4.7: 429 over it)."""
    authorize_trigger(principal)
    await count_team_request(request, principal)
    return principal


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Repeat a trigger with the same key to get the first answer again: nothing "
        "is written or sent a second time (400 if the key comes with another body).",
    ),
]
TriggerBody = Annotated[TriggerBotMessageRequest, Depends(json_body(TriggerBotMessageRequest, _check_trigger))]


@router.post(
    "/api/trigger_bot",
    summary="Trigger the bot to send a message to the user",
    operation_id="trigger_bot_message",
    response_model=TriggerBotResponse,
    responses=error_responses(400, 401, 403, 404, 405, 408, 413, 415, 429, 503),
    openapi_extra=request_body("TriggerBotMessageRequest"),
)
@router.post("/api/trigger_bot/", include_in_schema=False)
async def trigger_bot_message(
    request: Request,
    principal: Annotated[Principal, Depends(trigger_principal)],
    body: TriggerBody,
    store: StoreDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Ask the chatbot to write to a participant on a platform. The message is written (from
    `prompt_text`, an instruction to the bot; or `message_text`, sent as it is) and delivered in
    the background, with retries; follow it at `GET /api/deliveries/{delivery_id}`. A repeat
    with the same `Idempotency-Key` answers as the first and sends nothing."""
    result = await trigger_bot(store, principal, body, idempotency_key, settings.idempotency_key_seconds)
    request.app.state.runtime.deliveries_added()  # this process's worker, at once
    return result.body()


@router.get(
    "/api/deliveries/{delivery_id}",
    summary="The status of a bot-initiated message",
    operation_id="delivery_status",
    response_model=DeliveryStatusResponse,
    responses=error_responses(401, 403, 404, 429),
)
@router.get("/api/deliveries/{delivery_id}/", include_in_schema=False)
async def get_delivery(
    principal: TeamPrincipal,
    sessions: SessionmakerDep,
    delivery_id: Annotated[str, Path(description="The `delivery_id` trigger_bot returned.")],
) -> Any:
    """Where a triggered message is: `pending` (waiting for its next attempt), `sending`,
    `sent`, `failed` (a permanent error, or every attempt used: see `last_error`) or `skipped`
    (channel disabled or consent withdrawn after the trigger)."""
    # The credentials that may trigger may follow what they triggered (a read-only key too).
    if principal.kind == "embed_key" or principal.role not in TRIGGER_ROLES:
        raise PermissionDenied()
    async with sessions() as db:
        return await delivery_status(db, delivery_id, principal.team_id)
