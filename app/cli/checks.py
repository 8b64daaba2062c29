"""What ``chatbots serve`` and ``chatbots worker`` check before they start, each failure one
line on stderr and exit code 1 (no traceback): a secret key outside the embedded default, a
database that answers, and a schema at this version's migrations unless it migrates itself.

A process that starts anyway would fail later and less clearly: on its first encrypted secret,
on every request (503), or on a missing column mid-turn. An orchestrator restarts a process
that exits, so a database that is still starting is waited for there, not here.
"""

import asyncio
from typing import TYPE_CHECKING

from app.cli._common import fail, one_line

if TYPE_CHECKING:
    from app.config import Settings

DATABASE_TIMEOUT_SECONDS = 10.0


def check_before_start(settings: "Settings") -> None:
    try:
        settings.effective_secret_key  # noqa: B018 - raises outside the embedded default
    except RuntimeError as exc:
        fail(str(exc))
    problem = asyncio.run(database_problem(settings))
    if problem is not None:
        fail(problem)


async def database_problem(settings: "Settings") -> str | None:
    """Why the database cannot be used as configured, in one line; None when it can."""
    from sqlalchemy.engine import make_url

    from app.db import make_engine
    from app.migrate import current_revisions, head_revisions

    try:
        url = make_url(settings.database_url).render_as_string(hide_password=True)
        engine = make_engine(settings.database_url, pool_size=1, max_overflow=0)
    except Exception as exc:  # a malformed URL, a driver that is not installed
        return f"invalid CHATBOTS_DATABASE_URL: {one_line(exc)}"
    try:
        async with asyncio.timeout(DATABASE_TIMEOUT_SECONDS):
            current = await current_revisions(engine)
    except TimeoutError:
        return f"cannot reach the database at {url}: no answer within {DATABASE_TIMEOUT_SECONDS:.0f} s"
    except Exception as exc:  # refused, unknown host or database, bad password: the driver's words
        return f"cannot reach the database at {url}: {one_line(exc)}"
    finally:
        await engine.dispose()
    needed = head_revisions()
    if settings.should_auto_migrate or current == needed:
        return None
    how = "run `chatbots db upgrade` (or set CHATBOTS_AUTO_MIGRATE=true)"
    if not current:
        return f"the database at {url} has no schema yet: {how}"
    return (
        f"the database at {url} is at migration {', '.join(sorted(current))}, this version needs "
        f"{', '.join(sorted(needed))}: {how}"
    )
