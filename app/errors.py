"""Domain errors and the one error envelope (SPEC §3.1): ``{"detail": "..."}``.

Services raise these without knowing about HTTP; ``install_error_handlers`` maps them (and
FastAPI's own errors) to statuses and JSON bodies.
"""

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.db import DB_GONE

log = logging.getLogger(__name__)


class DomainError(Exception):
    status_code = 400
    detail = "Bad request."

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.detail)
        self.detail = detail or self.detail
        self.extra = extra
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, **self.extra}


class BadRequest(DomainError):
    status_code = 400


class NotAuthenticated(DomainError):
    status_code = 401
    detail = "Authentication credentials were not provided."

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail)
        self.headers = {"WWW-Authenticate": 'Bearer realm="api"'}


class PermissionDenied(DomainError):
    status_code = 403
    detail = "You do not have permission to perform this action."


class NotFound(DomainError):
    status_code = 404
    detail = "Not found."


class Conflict(DomainError):
    status_code = 409
    detail = "A request with this Idempotency-Key is already in progress."


class ProviderFailed(DomainError):
    status_code = 502


class ProviderTimedOut(DomainError):
    status_code = 504


class ServiceUnavailable(DomainError):
    status_code = 503
    detail = "Service temporarily unavailable."
    retry_after_seconds = 5

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(self.retry_after_seconds)}


def invalid_body(errors: dict[str, list[str]]) -> BadRequest:
    return BadRequest("Invalid request body.", errors=errors)


def error_response(exc: DomainError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers or None)


INTERNAL_ERROR = "Internal server error."


def internal_error_response(request_id: str) -> JSONResponse:
    """The answer to an unexpected exception: JSON, with the request id to find it in the log."""
    return JSONResponse({"detail": INTERNAL_ERROR, "request_id": request_id}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Exception)
    async def _unexpected(request: Request, _: Exception) -> JSONResponse:
        # RequestIdMiddleware answers (and logs) the exceptions raised inside it. Starlette runs
        # this handler in ServerErrorMiddleware, outside every middleware, so it is reached only
        # by an exception raised outside RequestIdMiddleware: it sets X-Request-ID itself, and
        # does not log, as the exception then goes on to the server, which logs it.
        request_id = (
            request.scope.get("state", {}).get("request_id")
            or request.headers.get("x-request-id", "")[:200]
            or uuid.uuid4().hex
        )
        response = internal_error_response(request_id)
        response.headers["X-Request-ID"] = request_id
        return response

    @app.exception_handler(DomainError)
    async def _domain(_: Request, exc: DomainError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors: dict[str, list[str]] = {}
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"][1:]) or "non_field_errors"
            errors.setdefault(field, []).append(err["msg"])
        return error_response(invalid_body(errors))

    @app.exception_handler(DBAPIError)
    @app.exception_handler(SQLAlchemyTimeoutError)
    async def _database_down(_: Request, exc: Exception) -> JSONResponse:
        """SQLAlchemy's database errors: connection refused, database gone, pool exhausted
        are a failing dependency (SQLAlchemy's pool has already invalidated the connections
        it saw fail). The PostgreSQL store raises ``ServiceUnavailable`` itself."""
        if isinstance(exc, DBAPIError) and not _is_unavailable(exc):
            raise exc  # a bug (constraint, SQL error): let it be a logged 500, not a 503
        log.warning("database unavailable: %s", type(exc).__name__)
        return error_response(ServiceUnavailable())


def _is_unavailable(exc: DBAPIError) -> bool:
    # SQLAlchemy's asyncpg adapter wraps the server's "go away" errors (e.g. "the database
    # system is starting up" after a crash) as a plain DBAPIError: the driver's own error,
    # the adapted error's cause, says what it was.
    driver_error = getattr(exc.orig, "__cause__", None)
    return (exc.connection_invalidated or isinstance(exc, (OperationalError, InterfaceError))
            or isinstance(driver_error, DB_GONE))  # fmt: skip
