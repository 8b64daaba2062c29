"""Participants and the channels they talk on (SPEC §3.2 step 4)."""

from dataclasses import dataclass

from sqlalchemy import and_, bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import insert_or_get
from app.models import Channel, Participant, ParticipantData, Platform


async def get_team_api_channel(session: AsyncSession, team_id: int) -> Channel:
    """The team's API channel, created on first use (at most one: a partial unique index)."""

    async def find() -> Channel | None:
        return await session.scalar(
            select(Channel).where(
                Channel.team_id == team_id,
                Channel.chatbot_id.is_(None),
                Channel.platform == Platform.api,
                Channel.deleted.is_(False),
            )
        )

    return await insert_or_get(
        session, find, lambda: Channel(team_id=team_id, platform=Platform.api, name="API")
    )


async def get_participant(
    session: AsyncSession, team_id: int, platform: str, identifier: str, user_id: int | None = None
) -> Participant:
    async def find() -> Participant | None:
        return await session.scalar(
            select(Participant).where(
                Participant.team_id == team_id,
                Participant.platform == platform,
                Participant.identifier == identifier,
            )
        )

    return await insert_or_get(
        session,
        find,
        lambda: Participant(
            team_id=team_id, platform=platform, identifier=identifier, user_id=user_id
        ),
    )


async def load_participant_data(
    session: AsyncSession, participant_id: int, chatbot_id: int
) -> ParticipantData | None:
    return await session.scalar(
        select(ParticipantData).where(
            ParticipantData.participant_id == participant_id,
            ParticipantData.chatbot_id == chatbot_id,
        )
    )


@dataclass(frozen=True)
class ApiPlace:
    """Where a user credential's turn happens: the team's API channel and the user's participant."""

    participant_id: int
    identifier: str
    channel_id: int
    channel_enabled: bool
    disabled_message: str | None


_API_PLACE = (
    select(Channel.id, Channel.enabled, Channel.disabled_message, Participant.id)
    .outerjoin(
        Participant,
        and_(
            Participant.team_id == bindparam("team_id"),
            Participant.platform == Platform.api,
            Participant.identifier == bindparam("identifier"),
        ),
    )
    .where(
        Channel.team_id == bindparam("team_id"),
        Channel.chatbot_id.is_(None),
        Channel.platform == Platform.api,
        Channel.deleted.is_(False),
    )
)


async def get_api_place(
    session: AsyncSession, team_id: int, email: str, user_id: int
) -> ApiPlace:
    """One query when both exist (every turn but a team's or user's first)."""
    row = (
        await session.execute(_API_PLACE, {"team_id": team_id, "identifier": email})
    ).first()
    if row is None or row[3] is None:
        channel = await get_team_api_channel(session, team_id)
        participant = await get_participant(session, team_id, Platform.api, email, user_id)
        return ApiPlace(participant.id, email, channel.id, channel.enabled, channel.disabled_message)
    channel_id, enabled, disabled_message, participant_id = row
    return ApiPlace(participant_id, email, channel_id, enabled, disabled_message)
