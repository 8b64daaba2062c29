"""Request and response bodies, named as in the seed (``chatbots-v1-api.txt``).

Types are strict (``"message": 5`` is an error, not coerced) and unknown fields are ignored.
"""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

NonBlank = Annotated[str, StringConstraints(min_length=1), Field()]


class StrictModel(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class ApiMessage(StrictModel):
    message: str = Field(description="The user's message to the chatbot. May not be blank.")
    session: str | None = Field(
        default=None,
        description="A session id returned earlier (`session_id`). Omit it to continue the "
        "participant's open session with this chatbot, or start one.",
    )


class ApiResponseAttachment(BaseModel):
    file_name: str
    link: str


class ApiResponseMessage(BaseModel):
    response: str = Field(description="The chatbot's reply.")
    attachments: list[ApiResponseAttachment] = Field(description="Always present; may be empty.")
    session_id: str = Field(description="The session's id: pass it as `session` to continue.")


class ErrorResponse(BaseModel):
    detail: str


class ValidationErrorResponse(BaseModel):
    detail: str = "Invalid request body."
    errors: dict[str, list[str]]


class ProviderErrorResponse(BaseModel):
    detail: str
    session_id: str | None = None
