"""Chatbot public ids and publishing versions (SPEC §2.1). Resolving the version that answers a
turn is the store's ``TARGET`` query (``app.stores.statements``)."""

import uuid

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import NotFound
from app.models import Chatbot

CHATBOT_NOT_FOUND = "No chatbot matches the given query."


def parse_public_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except (ValueError, AttributeError, TypeError):
        raise NotFound(CHATBOT_NOT_FOUND) from None


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
