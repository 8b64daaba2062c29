"""The Chatbots v1 conversation endpoints: ``incoming_message``, plain and version-pinned."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Request

from app.auth.dependencies import ChatPrincipal
from app.auth.principal import Principal
from app.auth.rate_limit_http import count_team_request
from app.config import Settings
from app.errors import NotFound
from app.routers.body import json_body, nul_characters
from app.routers.deps import LlmDep, SessionmakerDep, SettingsDep, StoreDep
from app.routers.openapi_docs import error_responses, request_body
from app.schemas import ApiMessage, ApiResponseMessage
from app.services.idempotency import request_fingerprint, run_idempotent
from app.services.turn import TurnRequest, run_turn

router = APIRouter(tags=["Channels"])
MAX_VERSION = 2**31 - 1  # the column is a 32-bit integer: anything larger cannot exist


def _check_message(body: ApiMessage, settings: Settings) -> dict[str, list[str]]:
    if not body.message.strip():
        return {"message": ["This field may not be blank."]}
    if errors := nul_characters(body.message, "message"):
        return errors
    if len(body.message) > settings.max_message_chars:
        return {
            "message": [f"Ensure this field has no more than {settings.max_message_chars} characters."]
        }
    return {}


async def team_limited_principal(request: Request, principal: ChatPrincipal) -> Principal:
    """Authenticated, then counted against its team's rate limit (SPEC §4.7) before the body
    is read: an over-limit client gets its 429 without sending or parsing anything more."""
    await count_team_request(request, principal)
    return principal


ChatCaller = Annotated[Principal, Depends(team_limited_principal)]
ApiMessageBody = Annotated[ApiMessage, Depends(json_body(ApiMessage, _check_message))]
ExperimentId = Annotated[str, Path(description="Experiment ID")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Repeat a request with the same key to get the first response again "
        "without a second turn (409 while the first is still in flight).",
    ),
]

_OPERATION: dict[str, Any] = {
    "response_model": ApiResponseMessage,
    "responses": error_responses(400, 401, 403, 404, 405, 408, 409, 413, 415, 429, 502, 503, 504),
    "openapi_extra": request_body("ApiMessage"),
}


async def _incoming(
    sessions: SessionmakerDep,
    store: StoreDep,
    llm: LlmDep,
    settings: SettingsDep,
    principal: Principal,
    experiment_id: str,
    version: int | None,
    body: ApiMessage,
    idempotency_key: str | None,
) -> dict[str, Any]:
    async def turn() -> dict[str, Any]:
        request = TurnRequest(principal, experiment_id, version, body.message, body.session)
        result = await run_turn(store, llm, settings, request)
        return {
            "response": result.response,
            "attachments": result.attachments,
            "session_id": result.session_id,
        }

    if idempotency_key is None:
        return await turn()
    async with sessions() as db:  # only here: a turn itself runs on the store
        return await run_idempotent(
            db,
            credential=principal.credential_id,
            key=idempotency_key,
            fingerprint=request_fingerprint(
                f"{experiment_id}/{version}", body.model_dump(mode="json")
            ),
            stale_after=settings.session_lease_seconds,
            key_seconds=settings.idempotency_key_seconds,
            operation=turn,
        )


@router.post(
    "/channels/api/{experiment_id}/incoming_message",
    summary="New API Message",
    operation_id="new_api_message",
    **_OPERATION,
)
@router.post("/channels/api/{experiment_id}/incoming_message/", include_in_schema=False)
async def new_api_message(
    principal: ChatCaller,
    body: ApiMessageBody,
    sessions: SessionmakerDep,
    store: StoreDep,
    llm: LlmDep,
    settings: SettingsDep,
    experiment_id: ExperimentId,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Send a user's message to the chatbot's published version and get its reply."""
    return await _incoming(sessions, store, llm, settings, principal, experiment_id, None, body, idempotency_key)


@router.post(
    "/channels/api/{experiment_id}/v{version}/incoming_message",
    summary="New API Message Versioned",
    operation_id="new_api_message_versioned",
    **_OPERATION,
)
@router.post("/channels/api/{experiment_id}/v{version}/incoming_message/", include_in_schema=False)
async def new_api_message_versioned(
    principal: ChatCaller,
    body: ApiMessageBody,
    sessions: SessionmakerDep,
    store: StoreDep,
    llm: LlmDep,
    settings: SettingsDep,
    experiment_id: ExperimentId,
    version: Annotated[
        str,
        Path(
            description="Version number: 0 for the published version; the working version's "
            "number for the unreleased draft.",
            json_schema_extra={"type": "integer"},
        ),
    ],
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Send a user's message to one version of the chatbot and get its reply."""
    # Significant digits counted before converting: int() refuses over 4,300 digits (ValueError).
    digits = version.lstrip("0") or "0"
    if (
        not (version.isascii() and version.isdigit())
        or len(digits) > len(str(MAX_VERSION))
        or int(digits) > MAX_VERSION
    ):
        raise NotFound(f"Chatbot version {version} not found.")
    return await _incoming(
        sessions, store, llm, settings, principal, experiment_id, int(digits), body, idempotency_key
    )
