"""Log format: one JSON object per line (``CHATBOTS_LOG_FORMAT=json``) or plain text.

Every line written while a request is handled carries its request id (a context variable set
by ``RequestIdMiddleware``), and a call may add machine-readable fields with
``extra={"fields": {...}}`` (the access line's route, status, duration...). The standard
library only: a formatter is a few lines, and a logging dependency would be one more thing on
every request's path.
"""

import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from app.config import Settings

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", "request_id"?, ...fields, "exception"?}``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            entry["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """The plain format, then the request id and the record's fields as ``name=value``."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = dict(getattr(record, "fields", None) or {})
        request_id = REQUEST_ID.get()
        if request_id is not None:
            extras["request_id"] = request_id
        if not extras:
            return line
        head, newline, rest = line.partition("\n")  # after the message, before a traceback
        pairs = " ".join(f"{name}={value}" for name, value in extras.items())
        return f"{head} [{pairs}]{newline}{rest}"


class _OwnHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler ``configure_logging`` installs: found and replaced when called again."""


def log_format(settings: "Settings") -> str:
    """``json`` or ``text``: as set, else text for the embedded SQLite default (a person at a
    terminal) and JSON anywhere else (a log collector reads it)."""
    if settings.log_format is not None:
        return settings.log_format
    return "text" if settings.is_sqlite else "json"


def configure_logging(settings: "Settings") -> None:
    """The root logger's level and format. Replaces what an earlier call installed; leaves
    alone a root logger that something else configured (a test runner's capture), as
    ``logging.basicConfig`` would."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _OwnHandler)]:
        root.removeHandler(handler)
    if not root.handlers:
        root.setLevel(settings.log_level.upper())
        handler = _OwnHandler()
        handler.setFormatter(
            JsonFormatter() if log_format(settings) == "json" else TextFormatter()
        )
        root.addHandler(handler)
    # httpx logs every request's URL at INFO, and some providers' URLs carry a secret (Telegram's
    # bot token): no secret in the logs.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Authlib logs the tokens it issues at DEBUG: never, whatever the level (no secret in logs).
    logging.getLogger("authlib").setLevel(logging.INFO)
    # Alembic announces its plugins and dialect at INFO each time it looks at the schema (the
    # start-up check, /readyz): noise; its warnings and errors still come through.
    logging.getLogger("alembic").setLevel(logging.WARNING)
