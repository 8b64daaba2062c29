"""The OpenAPI document (SPEC §3): the seed's schema names and statuses. The security schemes
come from the authentication dependencies (``app.auth.dependencies``).

The document says what the service does, no more and no less: every status an operation can
answer is declared with the body it has, and every rule the service enforces on a field is in
its schema (``schemathesis`` checks both against the running service: ``.ci/conformance``). The
rules that are settings (``CHATBOTS_MAX_MESSAGE_CHARS``) are written in from the app's settings;
``openapi.json`` at the top of the repository is the document under the default settings.
"""

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel

from app.auth.dependencies import SCHEME_KINDS, find_authenticator
from app.config import Settings
from app.schemas import (ApiMessage, BadRequestResponse, ErrorResponse, ProviderErrorResponse, RateLimitedResponse,
                         TriggerBotMessageRequest)  # fmt: skip
from app.services.idempotency import MAX_KEY_LENGTH

_DESCRIPTIONS = {
    400: "Invalid request body (with `errors`), JSON parse error, a bad `Idempotency-Key`, or a "
    "request the chatbot cannot serve.",
    401: "No credential, or an invalid, revoked or expired one.",
    403: "The credential may not do this (read-only key, missing scope, role).",
    404: "No such chatbot, version or session in the credential's team.",
    405: "Method not allowed.",
    408: "The request body did not arrive within the body timeout.",
    409: "A request with this Idempotency-Key is still in flight.",
    413: "Request body too large.",
    415: "Content type is not JSON.",
    429: "Rate limit exceeded (the team's, or the client's failed authentications); retry "
    "after `Retry-After` seconds.",
    502: "The language model provider failed. The user's message is kept.",
    503: "The database is unavailable; retry after `Retry-After` seconds.",
    504: "The language model provider timed out. The user's message is kept.",
}
_MODELS: dict[int, type] = {400: BadRequestResponse, 429: RateLimitedResponse,
                            502: ProviderErrorResponse, 504: ProviderErrorResponse}  # fmt: skip


def _integer_header(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "integer"}}


_HEADERS: dict[int, dict[str, Any]] = {
    429: {
        "Retry-After": _integer_header("Seconds to wait (the body's `available_in`)."),
        "X-RateLimit-Limit": _integer_header("The limit that was exceeded."),
        "X-RateLimit-Remaining": _integer_header("Requests left in its window: 0."),
        "X-RateLimit-Reset": _integer_header("Seconds from now until one more is allowed."),
    }
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {
        code: {
            "description": _DESCRIPTIONS[code],
            "model": _MODELS.get(code, ErrorResponse),
            **({"headers": _HEADERS[code]} if code in _HEADERS else {}),
        }
        for code in codes
    }


def request_body(schema_name: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}
            },
        }
    }


BODY_SCHEMAS = (ApiMessage, TriggerBotMessageRequest)

# The header's rule (app.services.idempotency): 1 to 255 characters, not all whitespace (a
# server strips a header value's surrounding whitespace, so a blank key arrives empty).
IDEMPOTENCY_KEY_RULES: dict[str, Any] = {"minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": r"\S"}


def idempotency_key_schema(schema: dict[str, Any]) -> None:
    """The header's schema (``json_schema_extra``): a string with its rules (no null: an
    absent header is how a client says it has no key)."""
    schema.pop("anyOf", None)
    schema.update(type="string", **IDEMPOTENCY_KEY_RULES)


def _write_in_settings(schemas: dict[str, Any], settings: Settings) -> None:
    """The text limits that are settings, as the running service applies them."""
    limit = settings.max_message_chars
    schemas["ApiMessage"]["properties"]["message"]["maxLength"] = limit
    for name in ("prompt_text", "message_text"):
        schemas["TriggerBotMessageRequest"]["properties"][name]["maxLength"] = limit


def _offer_admitted_schemes(app: FastAPI, schema: dict[str, Any]) -> None:
    """Every route shares the Authenticator's signature, so FastAPI lists all five schemes on
    each; keep on each operation only those its Authenticator admits (no embedKeyAuth on
    trigger_bot: an embed key there is a 403)."""
    for context in iter_route_contexts(app.routes):  # included routers' routes too
        route = context.original_route
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        authenticator = find_authenticator(route.dependant)
        if authenticator is None:
            continue
        for method in route.methods:
            operation = schema["paths"].get(context.path_format or route.path_format, {}).get(method.lower())
            if operation and "security" in operation:
                operation["security"] = [
                    requirement for requirement in operation["security"]
                    if any(SCHEME_KINDS.get(name, frozenset()) & authenticator.allowed_kinds for name in requirement)
                ]  # fmt: skip


def install_openapi(app: FastAPI, form_schemas: Sequence[type[BaseModel]] = ()) -> None:
    """``form_schemas``: the bodies of operations that read a form themselves (the OAuth2
    endpoints), declared by reference in their ``openapi_extra``."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            tags=[{"name": "Channels"}],
        )
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        for model in (*BODY_SCHEMAS, *form_schemas):  # bodies are parsed by a dependency, so declare them here
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(body.pop("$defs", {}))  # what it refers to (the Platform enum)
            schemas[model.__name__] = body
        _write_in_settings(schemas, app.state.settings)
        schemes = components.get("securitySchemes", {})
        _offer_admitted_schemes(app, schema)
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
                # FastAPI gives every scheme of a dependency the scopes of its Security(); only
                # OAuth2's are scopes (the other credentials carry every scope they need).
                for requirement in operation.get("security", []):
                    for name in requirement:
                        if schemes.get(name, {}).get("type") != "oauth2":
                            requirement[name] = []
        for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422: not ours
            schemas.pop(unused, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
