"""Request and response bodies, named as in the seed (``chatbots-v1-api.txt``).

Types are strict (``"message": 5`` is an error, not coerced) and unknown fields are ignored.
"""

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.channels.phone import InvalidPhoneNumber, to_e164
from app.models import Platform

NonBlank = Annotated[str, StringConstraints(min_length=1), Field()]

# What the document says of a text field the service checks beyond its type (the OpenAPI
# document must say what the service does: a fuzzer or a client generator relies on it): at
# least one character that is not whitespace (Python's ``str.strip`` and the regex ``\S`` agree),
# and no NUL, which PostgreSQL cannot store. The largest length is a setting
# (``CHATBOTS_MAX_MESSAGE_CHARS``): ``app.routers.openapi_docs`` adds it to the document.
NOT_BLANK_NO_NUL = r"^[^\u0000]*[^\u0000\s][^\u0000]*$"
TEXT_RULES: dict[str, Any] = {"minLength": 1, "pattern": NOT_BLANK_NO_NUL}


class StrictModel(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class ApiMessage(StrictModel):
    message: str = Field(
        description="The user's message to the chatbot. May not be blank or hold a NUL character.",
        json_schema_extra=TEXT_RULES,
    )
    session: str | None = Field(
        default=None,
        description="A session id returned earlier (`session_id`). Omit it to continue the "
        "participant's open session with this chatbot, or start one.",
    )


def _exactly_one(first: str, second: str) -> dict[str, Any]:
    """JSON Schema for "exactly one of two optional fields is given" where an explicit null
    counts as not given (as ``trigger_errors`` reads it)."""

    def given(name: str, other: str) -> dict[str, Any]:
        return {"required": [name], "properties": {name: {"type": "string"}, other: {"type": "null"}}}

    return {"oneOf": [given(first, second), given(second, first)]}


class TriggerBotMessageRequest(StrictModel):
    """``POST /api/trigger_bot`` (SPEC §3.3). The rules that need no database or settings are
    here (``trigger_errors`` adds the rest, per field, as the 400 envelope lists them)."""

    # The document states every rule that needs no database; what only the database can answer
    # (the chatbot's channel for ``platform``, a WhatsApp number that cannot be normalised,
    # consent) is a 400 of a well-formed request.
    model_config = ConfigDict(json_schema_extra=_exactly_one("prompt_text", "message_text"))

    identifier: str = Field(
        description="The participant's id on the platform: a phone number for WhatsApp, a chat "
        "id for Telegram, an email address for email, ...",
        json_schema_extra={**TEXT_RULES, "maxLength": 320},
    )
    platform: Platform = Field(description="The channel to write on.")
    experiment: str = Field(description="The chatbot's id (a UUID).", json_schema_extra={"format": "uuid"})
    prompt_text: str | None = Field(
        default=None,
        description="An instruction to the bot (\"Remind them of tomorrow's appointment\"): the "
        "bot writes the message. Exactly one of prompt_text and message_text.",
        json_schema_extra=TEXT_RULES,
    )
    message_text: str | None = Field(
        default=None,
        description="The message to send as it is, without the model.",
        json_schema_extra=TEXT_RULES,
    )
    start_new_session: bool = Field(
        default=False, description="End the participant's current session and start a new one."
    )
    session_data: dict[str, Any] = Field(
        default_factory=dict,
        description="Merged (shallowly) into the session's state. May not hold `page_context`.",
        json_schema_extra={"not": {"required": ["page_context"]}},
    )
    page_context: dict[str, Any] | None = Field(
        default=None, description="Replaces the session state's `page_context`."
    )
    participant_data: dict[str, Any] = Field(
        default_factory=dict,
        description="Merged (shallowly) into the participant's data for this chatbot.",
    )


PAGE_CONTEXT_IN_SESSION_DATA = (
    "The 'page_context' key cannot be set directly in session_data; use the page_context field "
    "instead."
)
MAX_IDENTIFIER_CHARS = 320


def trigger_errors(body: TriggerBotMessageRequest, max_text_chars: int) -> dict[str, list[str]]:
    """Field errors of a trigger beyond its types (SPEC §3.3), keyed like the 400 envelope's."""
    errors: dict[str, list[str]] = {}
    if not body.identifier.strip():
        errors["identifier"] = ["This field may not be blank."]
    elif len(body.identifier) > MAX_IDENTIFIER_CHARS:
        errors["identifier"] = [f"Ensure this field has no more than {MAX_IDENTIFIER_CHARS} characters."]
    texts = {"prompt_text": body.prompt_text, "message_text": body.message_text}
    given = {name: text for name, text in texts.items() if text is not None}
    if not given:
        errors["prompt_text"] = ["This field is required (or message_text)."]
    elif len(given) == 2:
        errors["non_field_errors"] = ["Give exactly one of prompt_text and message_text."]
    for name, text in given.items():
        if not text.strip():
            errors[name] = ["This field may not be blank."]
        elif len(text) > max_text_chars:
            errors[name] = [f"Ensure this field has no more than {max_text_chars} characters."]
    if "page_context" in body.session_data:
        errors["session_data"] = [PAGE_CONTEXT_IN_SESSION_DATA]
    try:
        uuid.UUID(body.experiment)
    except ValueError:
        errors["experiment"] = ["Must be a valid UUID."]
    if body.platform == Platform.whatsapp and "identifier" not in errors:
        try:
            to_e164(body.identifier)
        except InvalidPhoneNumber as exc:
            errors["identifier"] = [str(exc)]
    return errors


class TriggerBotResponse(BaseModel):
    """Our addition (the seed's 200 has no body; clients that ignore it are unaffected)."""

    session_id: str = Field(description="The session the message is written in.")
    channel: str = Field(description="The platform it is sent on.")
    delivery_id: str = Field(description="Follow it at `GET /api/deliveries/{delivery_id}`.")


class DeliveryStatusResponse(BaseModel):
    id: str
    status: Literal["pending", "sending", "sent", "failed", "skipped"]
    platform: str
    session_id: str
    attempts: int = Field(description="Send attempts made so far.")
    last_error: str | None = Field(description="The last failure, or why it was skipped.")
    provider_message_id: str | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None


class ApiResponseAttachment(BaseModel):
    file_name: str
    link: str


class ApiResponseMessage(BaseModel):
    response: str = Field(description="The chatbot's reply.")
    attachments: list[ApiResponseAttachment] = Field(description="Always present; may be empty.")
    session_id: str = Field(description="The session's id: pass it as `session` to continue.")


class ErrorResponse(BaseModel):
    detail: str


class RateLimitedResponse(BaseModel):
    detail: str = "Rate limit exceeded."
    available_in: int = Field(description="Seconds until a request may succeed (as Retry-After).")


class BadRequestResponse(BaseModel):
    """Every 400 of the API: a field validation error has ``errors`` (``"Invalid request
    body."``); a JSON parse error, a bad ``Idempotency-Key`` or a request the chatbot cannot
    serve has ``detail`` alone."""

    detail: str
    errors: dict[str, list[str]] = Field(
        default_factory=dict, description="Per field, what is wrong with it (validation errors only)."
    )


class ProviderErrorResponse(BaseModel):
    detail: str
    session_id: str | None = None
