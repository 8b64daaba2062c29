"""The OpenAPI document (SPEC §3): the seed's schema names and statuses. The security schemes
come from the authentication dependencies (``app.auth.dependencies``)."""

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts

from app.auth.dependencies import SCHEME_KINDS, find_authenticator
from app.schemas import (ApiMessage, ErrorResponse, ProviderErrorResponse, RateLimitedResponse,
                         TriggerBotMessageRequest, ValidationErrorResponse)  # fmt: skip

_DESCRIPTIONS = {
    400: "Invalid request body, JSON parse error, or a request the chatbot cannot serve.",
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
_MODELS: dict[int, type] = {400: ValidationErrorResponse, 429: RateLimitedResponse,
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


def install_openapi(app: FastAPI) -> None:
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
        for model in BODY_SCHEMAS:  # bodies are parsed by a dependency, so declare them here
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(body.pop("$defs", {}))  # what it refers to (the Platform enum)
            schemas[model.__name__] = body
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
