"""Assertions shared by the API tests: the error envelope, and that nothing was written."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import Channel, ChatMessage, ChatSession, Participant
from tests.factories import World

Db = async_sessionmaker[AsyncSession]


async def row_counts(db: Db, *worlds: World) -> dict[str, int]:
    """Rows of the conversation tables that belong to the worlds' teams."""
    team_ids = [w.team.id for w in worlds]
    sessions = select(ChatSession.id).where(ChatSession.team_id.in_(team_ids))

    def count(model: Any, *where: Any) -> Any:
        return select(func.count()).select_from(model).where(*where)

    async with db() as s:
        return {
            "chat_message": await s.scalar(count(ChatMessage, ChatMessage.session_id.in_(sessions))),
            "chat_session": await s.scalar(count(ChatSession, ChatSession.team_id.in_(team_ids))),
            "participant": await s.scalar(count(Participant, Participant.team_id.in_(team_ids))),
            "channel": await s.scalar(count(Channel, Channel.team_id.in_(team_ids))),
        }


@asynccontextmanager
async def nothing_written(db: Db, *worlds: World) -> AsyncIterator[None]:
    """Asserts that the requests made inside the block wrote no conversation rows."""
    before = await row_counts(db, *worlds)
    yield
    assert await row_counts(db, *worlds) == before


def assert_error(r: httpx.Response, status: int, body: dict[str, Any] | None = None) -> None:
    """A JSON error envelope with this status (and exactly this body, when given)."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    if body is not None:
        assert r.json() == body
    else:
        assert set(r.json()) == {"detail"} and isinstance(r.json()["detail"], str), r.json()
        assert r.json()["detail"]
