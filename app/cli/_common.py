"""What every command shares: settings, one transaction per invocation, errors as messages,
JSON and table output, and the option types several command groups use.

Only the standard library and typer are imported here at module level; the database layer is
imported inside the functions that need it.
"""

import asyncio
import dataclasses
import enum
import json
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from app.config import Settings

T = TypeVar("T")

Opt = typer.Option
Json = Annotated[bool, Opt("--json", help="Print one JSON document on stdout.")]
TeamOpt = Annotated[str, Opt(help="Team slug.")]
TeamFilter = Annotated[str | None, Opt("--team", help="Only this team (slug).")]
FROM_STDIN = "Use - to read it from standard input (keeps it out of the shell history)."


def command_group(help: str) -> typer.Typer:
    return typer.Typer(help=help, no_args_is_help=True)


def fail(message: str) -> NoReturn:
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(1)


def load_settings() -> "Settings":
    from pydantic import ValidationError

    from app.config import Settings

    try:
        return Settings()
    except ValidationError as exc:
        fail(f"invalid settings: {exc}")


def guarded(call: Callable[[], T]) -> T:
    """Domain and database errors become a message and exit code 1, never a traceback."""
    from sqlalchemy.exc import DBAPIError

    from app.errors import DomainError

    try:
        return call()
    except DomainError as exc:
        fail(exc.detail)
    except (DBAPIError, OSError) as exc:
        reason = one_line(exc)
        if "no such table" in reason or ("relation" in reason and "does not exist" in reason):
            reason += " (run `chatbots db upgrade` first)"
        fail(f"database error: {reason}")


def one_line(exc: BaseException) -> str:
    """A database or driver error in one line: the driver's own first line (SQLAlchemy's
    wrapper adds the statement and a link), or the error's type when it says nothing."""
    reason = str(getattr(exc, "orig", None) or exc).strip()
    return reason.splitlines()[0] if reason else type(exc).__name__


def run(
    work: Callable[["AsyncSession", "Settings"], Awaitable[T]],
    settings: "Settings | None" = None,
) -> T:
    """Run ``work`` in one committed transaction, on the process's runtime (``app.runtime``,
    as the service builds it), migrating the embedded default first as the service would."""
    settings = settings or load_settings()

    async def main() -> T:
        from app.runtime import open_runtime

        async with open_runtime(settings) as runtime:
            if settings.should_auto_migrate:
                from app.migrate import upgrade_database

                await upgrade_database(runtime.engine, settings)
            async with runtime.sessionmaker() as session:
                result = await work(session, settings)
                await session.commit()
                return result

    return guarded(lambda: asyncio.run(main()))


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, default=_jsonable, indent=2, ensure_ascii=False))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, dict | list):
        return json.dumps(value, default=_jsonable, ensure_ascii=False)
    return str(value)


def _print_table(rows: Sequence[Any], columns: Sequence[str]) -> None:
    if not rows:
        typer.echo("(none)")
        return
    cells = [
        [_cell(row[c] if isinstance(row, dict) else getattr(row, c)) for c in columns]
        for row in rows
    ]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    for line in [list(columns), *cells]:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


def print_list(rows: Sequence[Any], columns: Sequence[str], as_json: bool) -> None:
    if as_json:
        print_json([dataclasses.asdict(r) if dataclasses.is_dataclass(r) else r for r in rows])
    else:
        _print_table(rows, columns)


def print_done(as_json: bool, data: dict[str, Any], message: str) -> None:
    if as_json:
        print_json(data)
    else:
        typer.echo(message)


def read_secret(value: str | None) -> str | None:
    return read_secret_line() if value == "-" else value


def read_secret_line(prompt: str = "Secret: ") -> str:
    """One line of standard input, without its line ending; at a terminal, asked for without
    echoing it (getpass), so the secret is neither shown nor kept in the shell's history."""
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass(prompt)
    return sys.stdin.readline().rstrip("\r\n")
