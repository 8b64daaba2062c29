"""Finding chatbots, resolving versions (SPEC §2.1) and publishing them."""

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from app.errors import NotFound
from app.models import Chatbot, LlmProvider

CHATBOT_NOT_FOUND = "No chatbot matches the given query."


def parse_public_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except (ValueError, AttributeError, TypeError):
        raise NotFound(CHATBOT_NOT_FOUND) from None


@dataclass(frozen=True)
class TurnChatbot:
    head: Chatbot  # the editable head: sessions, participants and channels point at it
    bot: Chatbot  # the version whose bot config answers this turn
    provider: LlmProvider | None


def _turn_chatbot_query(version_match: Callable[[Any], Any]) -> Any:
    head, ver = aliased(Chatbot, name="head"), aliased(Chatbot, name="version")
    return (
        select(head, ver, LlmProvider)
        .outerjoin(ver, (ver.working_version_id == head.id) & version_match(ver))
        .outerjoin(
            LlmProvider, LlmProvider.id == func.coalesce(ver.llm_provider_id, head.llm_provider_id)
        )
        .where(
            head.public_id == bindparam("public_id"),
            head.team_id == bindparam("team_id"),
            head.working_version_id.is_(None),
            head.is_archived.is_(False),
        )
    )


# Built once: constructing aliased statements costs more CPU than running them.
_WITH_PUBLISHED = _turn_chatbot_query(lambda ver: ver.is_published.is_(True))
_WITH_VERSION = _turn_chatbot_query(
    lambda ver: (ver.version_number == bindparam("version")) & ver.is_archived.is_(False)
)


async def load_turn_chatbot(
    session: AsyncSession, team_id: int, public_id: uuid.UUID, version: int | None
) -> TurnChatbot:
    """The team's chatbot (not archived; another team's is the same 404) with the version that
    answers (SPEC §2.1) and its provider, in one query.

    None or 0 → the published version, else the working version; N → version N, where N equal
    to the head's number is the working draft.
    """
    params: dict[str, Any] = {"public_id": public_id, "team_id": team_id}
    if version:
        params["version"] = version
    row = (await session.execute(_WITH_VERSION if version else _WITH_PUBLISHED, params)).first()
    if row is None:
        raise NotFound(CHATBOT_NOT_FOUND)
    head, version_row, provider = row
    if version_row is None and version not in (None, 0, head.version_number):
        raise NotFound(f"Chatbot version {version} not found.")
    return TurnChatbot(head=head, bot=version_row or head, provider=provider)


async def publish_version(
    session: AsyncSession, head: Chatbot, description: str = "", make_default: bool = True
) -> Chatbot:
    """Copy the head's bot config into version ``head.version_number`` and bump the head.

    The first version published is always the published one; later ones only with
    ``make_default``. Locks the head row (PostgreSQL) so concurrent publishes get distinct numbers;
    the unique (working_version_id, version_number) constraint backs this up.
    """
    head = (
        await session.execute(
            select(Chatbot).where(Chatbot.id == head.id).with_for_update().execution_options(
                populate_existing=True
            )
        )
    ).scalar_one()
    has_published = await session.scalar(
        select(Chatbot.id).where(
            Chatbot.working_version_id == head.id, Chatbot.is_published.is_(True)
        )
    )
    publish = make_default or has_published is None
    if publish and has_published is not None:
        await session.execute(
            update(Chatbot).where(Chatbot.id == has_published).values(is_published=False)
        )
    version = Chatbot(
        team_id=head.team_id,
        name=head.name,
        description=head.description,
        working_version_id=head.id,
        version_number=head.version_number,
        is_published=publish,
        version_description=description,
        **{field: getattr(head, field) for field in Chatbot.BOT_CONFIG_FIELDS},
    )
    session.add(version)
    head.version_number += 1
    await session.flush()
    return version
