"""Participants and the channels they talk on (SPEC §3.2 step 4)."""

from sqlalchemy import select
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
