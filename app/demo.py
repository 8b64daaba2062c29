"""The embedded default's demo: a team, a user, a write-enabled API key and a published chatbot,
created once so that ``chatbots serve`` on a laptop answers a curl straight away.

The model is ``CHATBOTS_DEMO_MODEL`` ("<provider_type>/<model>" or "echo"), else OpenAI or
Anthropic when their key is in the environment, else the offline ``echo`` provider.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.db import insert_or_get
from app.errors import BadRequest
from app.models import Chatbot, LlmProvider, Team
from app.services.admin import (
    create_api_key,
    create_chatbot,
    create_provider,
    create_user,
)
from app.services.admin_oauth import ensure_docs_client
from app.services.chatbots import publish_version

DEMO_TEAM_SLUG = "demo"
DEMO_EMAIL = "demo@example.com"
DEMO_PROVIDER_NAME = "demo"
DEMO_CHATBOT_NAME = "Demo chatbot"
DEMO_SYSTEM_PROMPT = (
    "You are the demo bot of the Chatbots API. Be friendly and answer in one or two short "
    "sentences. The current time is {current_datetime}."
)
ECHO = "echo"


@dataclass(frozen=True)
class DemoInfo:
    chatbot_public_id: str
    api_key: str | None  # the raw key, only when it was just created
    created: bool
    model: str = ""  # "<provider_type>/<model>"


@dataclass(frozen=True)
class DemoModel:
    provider_type: str
    model: str
    api_key: str | None

    @property
    def label(self) -> str:
        return f"{self.provider_type}/{self.model}"


def choose_demo_model(settings: Settings) -> DemoModel:
    if settings.demo_model:
        raw = settings.demo_model.strip()
        if raw.lower() == ECHO:
            return DemoModel(ECHO, ECHO, None)
        provider_type, slash, model = raw.partition("/")
        provider_type = provider_type.strip().lower()
        if not slash or not provider_type or not model.strip():
            raise BadRequest(
                f"CHATBOTS_DEMO_MODEL must be '<provider_type>/<model>' "
                f"(e.g. 'openai/gpt-4.1-mini') or 'echo', got {raw!r}."
            )
        keys = {"openai": settings.openai_api_key, "anthropic": settings.anthropic_api_key}
        return DemoModel(provider_type, model.strip(), keys.get(provider_type))
    if settings.openai_api_key:
        return DemoModel("openai", "gpt-4.1-mini", settings.openai_api_key)
    if settings.anthropic_api_key:
        return DemoModel("anthropic", "claude-sonnet-4-6", settings.anthropic_api_key)
    return DemoModel(ECHO, ECHO, None)


async def ensure_demo(
    session: AsyncSession,
    settings: Settings,
    *,
    team_slug: str = DEMO_TEAM_SLUG,
    base_urls: Sequence[str] = (),
) -> DemoInfo:
    """Create the demo once; later calls only report it. The caller commits.

    The API key is only created (and returned) together with the team: the raw key cannot be
    shown again, so later starts print how to make a new one instead. The /docs OAuth client
    (``ensure_docs_client``) gets the redirect URIs of ``base_urls``, on every call: a start on
    another port adds its own.
    """
    info = await _ensure_demo(session, settings, team_slug)
    if base_urls:
        await ensure_docs_client(session, team_slug, list(base_urls), settings.docs_oauth_client_id)
    return info


async def _ensure_demo(session: AsyncSession, settings: Settings, team_slug: str) -> DemoInfo:
    choice = choose_demo_model(settings)
    built: list[Team] = []

    def build_team() -> Team:
        built.append(Team(slug=team_slug, name="Demo"))
        return built[0]

    async def find_team() -> Team | None:
        return await session.scalar(select(Team).where(Team.slug == team_slug))

    team = await insert_or_get(session, find_team, build_team)
    created = bool(built) and team is built[0]

    if not created:
        existing = await _find_demo_chatbot(session, team)
        if existing is not None:
            head, label = existing
            return DemoInfo(str(head.public_id), None, False, label)
        # The team exists but its chatbot was archived or removed: make a new chatbot, no key.
        head = await _create_chatbot(session, settings, team, choice)
        return DemoInfo(str(head.public_id), None, False, choice.label)

    # An existing demo user (of another team) only gets the membership.
    await create_user(session, DEMO_EMAIL, team.slug, "admin")
    _, raw_key = await create_api_key(session, DEMO_EMAIL, team.slug, "demo", write=True)
    head = await _create_chatbot(session, settings, team, choice)
    return DemoInfo(str(head.public_id), raw_key, True, choice.label)


async def _find_demo_chatbot(session: AsyncSession, team: Team) -> tuple[Chatbot, str] | None:
    row = (
        await session.execute(
            select(Chatbot, LlmProvider.type)
            .outerjoin(LlmProvider, LlmProvider.id == Chatbot.llm_provider_id)
            .where(
                Chatbot.team_id == team.id,
                Chatbot.working_version_id.is_(None),
                Chatbot.is_archived.is_(False),
            )
            .order_by(Chatbot.created_at, Chatbot.id)
            .limit(1)
        )
    ).first()
    if row is None:
        return None
    head, provider_type = row
    return head, f"{provider_type}/{head.llm_model}"


async def _create_chatbot(
    session: AsyncSession, settings: Settings, team: Team, choice: DemoModel
) -> Chatbot:
    provider_exists = await session.scalar(
        select(LlmProvider.id).where(
            LlmProvider.team_id == team.id, LlmProvider.name == DEMO_PROVIDER_NAME
        )
    )
    if provider_exists is None:
        await create_provider(
            session, settings, team.slug, DEMO_PROVIDER_NAME, choice.provider_type,
            api_key=choice.api_key,
        )  # fmt: skip
    head = await create_chatbot(
        session,
        team.slug,
        DEMO_CHATBOT_NAME,
        DEMO_PROVIDER_NAME,
        choice.model,
        DEMO_SYSTEM_PROMPT,
        description="The embedded default's demo chatbot.",
    )
    await publish_version(session, head, description="Demo")
    return head


def demo_curl(base_url: str, chatbot_public_id: str, api_key: str | None) -> str:
    """A curl that works as printed (with the key, or with ``$CHATBOTS_DEMO_KEY`` set)."""
    url = f"{base_url.rstrip('/')}/channels/api/{chatbot_public_id}/incoming_message"
    rest = "-H 'Content-Type: application/json' -d '{\"message\": \"Hello!\"}'"
    if api_key is not None:
        return f"curl -sS -X POST {url} -H 'X-api-key: {api_key}' {rest}"
    return (
        "# The demo API key was printed when the demo was first created: "
        "export CHATBOTS_DEMO_KEY=<that key>.\n"
        f"# Lost it? Make a new one: chatbots apikey create --email {DEMO_EMAIL} "
        f"--team {DEMO_TEAM_SLUG} --name demo --write\n"
        f'curl -sS -X POST {url} -H "X-api-key: $CHATBOTS_DEMO_KEY" {rest}'
    )
