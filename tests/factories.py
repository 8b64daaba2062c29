"""Rows for tests, created directly through the models (each test gets its own team)."""

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.api_keys import generate_api_key
from app.config import Settings
from app.crypto import encrypt_config
from app.models import ApiKey, Chatbot, LlmProvider, Membership, Role, Team, User
from app.services.chatbots import publish_version


@dataclass
class World:
    team: Team
    user: User
    key: str  # a write-enabled API key of ``user``
    provider: LlmProvider
    chatbot: Chatbot  # the head (working version)
    extra_keys: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"/channels/api/{self.chatbot.public_id}/incoming_message"

    def version_url(self, version: int | str) -> str:
        return f"/channels/api/{self.chatbot.public_id}/v{version}/incoming_message"

    @property
    def headers(self) -> dict[str, str]:
        return {"X-api-key": self.key}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def add_user(
    session: AsyncSession, team: Team, role: Role = Role.member, email: str | None = None
) -> User:
    user = User(email=email or f"{unique('user')}@example.com")
    session.add(user)
    await session.flush()
    session.add(Membership(team_id=team.id, user_id=user.id, role=role))
    await session.flush()
    return user


async def add_key(
    session: AsyncSession,
    team: Team,
    user: User,
    *,
    read_only: bool = False,
    expires_at: datetime | None = None,
    revoked_at: datetime | None = None,
) -> str:
    generated = generate_api_key()
    session.add(
        ApiKey(
            team_id=team.id, user_id=user.id, name="test", prefix=generated.prefix,
            key_hash=generated.key_hash, read_only=read_only, expires_at=expires_at,
            revoked_at=revoked_at,
        )
    )  # fmt: skip
    await session.flush()
    return generated.key


async def make_world(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    *,
    api_base: str,
    model: str = "fake-model",
    publish: bool = True,
    **bot_config: object,
) -> World:
    async with sessionmaker() as session:
        team = Team(slug=unique("team"), name="Test team")
        session.add(team)
        await session.flush()
        user = await add_user(session, team, Role.admin)
        key = await add_key(session, team, user)
        provider = LlmProvider(
            team_id=team.id,
            type="openai_compatible",
            name="fake",
            config=encrypt_config({"api_base": api_base, "api_key": "sk-test"}, settings.effective_secret_key),
        )
        session.add(provider)
        await session.flush()
        chatbot = Chatbot(
            team_id=team.id,
            name="Test bot",
            llm_provider_id=provider.id,
            llm_model=model,
            system_prompt=str(bot_config.pop("system_prompt", "You are a helpful bot.")),
            **bot_config,
        )
        session.add(chatbot)
        await session.flush()
        if publish:
            await publish_version(session, chatbot)
        await session.commit()
        return World(team=team, user=user, key=key, provider=provider, chatbot=chatbot)


@dataclass
class Widget:
    """An embedded_widget channel of a world's chatbot, and its embed key."""

    channel_id: int
    key: str


async def add_widget(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    world: World,
    allowed_domains: str = "app.example.com",
) -> Widget:
    """Made as the CLI makes one (``create_channel``): a new key, its hash stored."""
    from app.crypto import decrypt_config
    from app.services.admin import create_channel

    async with sessionmaker() as session:
        channel = await create_channel(
            session, settings, world.chatbot.public_id, "embedded_widget",
            config={"allowed_domains": allowed_domains},
        )  # fmt: skip
        await session.commit()
        key = decrypt_config(channel.config, settings.effective_secret_key)["widget_token"]
        return Widget(channel.id, key)


async def add_telegram_channel(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, world: World, bot_token: str
) -> None:
    """The world's chatbot on Telegram, made as the CLI makes it (``create_channel``)."""
    from app.services.admin import create_channel

    async with sessionmaker() as session:
        await create_channel(session, settings, world.chatbot.public_id, "telegram", config={"bot_token": bot_token})
        await session.commit()
