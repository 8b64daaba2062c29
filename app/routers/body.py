"""JSON request bodies (SPEC §3.1), parsed by a dependency rather than by FastAPI.

Parsing here, after authentication, keeps the order SPEC §3.2 asks for (401/403 before 400) and
gives the exact statuses: 415 for a non-JSON content type, 413 over the size limit, 400 with
``JSON parse error - ...`` for malformed JSON and the ``Invalid request body.`` envelope for
fields that fail validation (never FastAPI's 422).
"""

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from app.config import Settings
from app.errors import BadRequest, DomainError, invalid_body

M = TypeVar("M", bound=BaseModel)
log = logging.getLogger(__name__)


class UnsupportedMediaType(DomainError):
    status_code = 415


class PayloadTooLarge(DomainError):
    status_code = 413
    detail = "Request body is too large."


class RequestTimeout(DomainError):
    status_code = 408
    detail = "Timed out reading the request body."

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail)
        self.headers = {"Connection": "close"}  # the rest of the body may still arrive


class ClientDisconnected(DomainError):
    """The client went away in the middle of its body: an ordinary event, not a failure. The
    answer ends the request cleanly; the server drops it, as there is no one to deliver it to."""

    status_code = 400
    detail = "The client disconnected before sending the whole request body."


_MESSAGES = {
    "missing": "This field is required.",
    "string_type": "Not a valid string.",
    "bool_type": "Must be a valid boolean.",
    "dict_type": "Must be an object.",
    "string_too_short": "This field may not be blank.",
    "model_type": "Invalid data. Expected a JSON object.",
    "model_attributes_type": "Invalid data. Expected a JSON object.",
}


def _is_json(content_type: str) -> bool:
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The whole body, read within ``timeout`` seconds (all of it, not each chunk)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge()
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge()
                chunks.append(chunk)
    except TimeoutError:
        _log_incomplete(request, "timed out reading the body", size, declared)
        raise RequestTimeout() from None
    except ClientDisconnect:
        _log_incomplete(request, "client disconnected", size, declared)
        raise ClientDisconnected() from None
    return b"".join(chunks)


def _log_incomplete(request: Request, what: str, size: int, declared: str | None) -> None:
    """One INFO line, no traceback: an unfinished body is the client's doing, not a failure."""
    log.info(
        "%s after %d of %s body bytes: %s %s (request %s)",
        what, size, declared or "?", request.method, request.url.path,
        request.scope.get("state", {}).get("request_id", "-"),
    )  # fmt: skip


def validation_errors(exc: ValidationError) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    for err in exc.errors(include_url=False):
        if err["type"] == "json_invalid":
            continue
        field = ".".join(str(p) for p in err["loc"]) or "non_field_errors"
        errors.setdefault(field, []).append(_MESSAGES.get(err["type"], err["msg"]))
    return errors


async def parse_json_body(request: Request, model: type[M], settings: Settings) -> M:
    raw = await read_body(request, settings.max_body_bytes, settings.body_timeout_seconds)
    if not raw.strip():
        raw = b"{}"  # no body at all: report the missing fields, whatever the content type
    else:
        content_type = request.headers.get("content-type", "")
        if not _is_json(content_type):
            shown = content_type.split(";", 1)[0].strip() or "none"
            raise UnsupportedMediaType(f'Unsupported media type "{shown}" in request.')
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        parse_error = next((e for e in exc.errors() if e["type"] == "json_invalid"), None)
        if parse_error is not None:
            reason = parse_error.get("ctx", {}).get("error", parse_error["msg"])
            raise BadRequest(f"JSON parse error - {reason}") from None
        raise invalid_body(validation_errors(exc)) from None


def nul_characters(value: Any, path: str = "") -> dict[str, list[str]]:
    """Fields holding a NUL character, which PostgreSQL cannot store in text or JSON."""
    if isinstance(value, str):
        return {path or "non_field_errors": ["Null characters are not allowed."]} if "\x00" in value else {}
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    errors: dict[str, list[str]] = {}
    for key, item in items:
        if isinstance(key, str) and "\x00" in key:  # an object's key is stored too
            errors[path or "non_field_errors"] = ["Null characters are not allowed."]
            continue
        errors.update(nul_characters(item, f"{path}.{key}" if path else str(key)))
    return errors


def json_body(model: type[M], check: Callable[[M, Settings], dict[str, list[str]]] | None = None) -> Any:
    """A dependency returning the validated body; ``check`` adds settings-dependent rules."""

    async def dependency(request: Request) -> M:
        settings: Settings = request.app.state.settings
        body = await parse_json_body(request, model, settings)
        if check is not None and (errors := check(body, settings)):
            raise invalid_body(errors)
        return body

    return dependency
