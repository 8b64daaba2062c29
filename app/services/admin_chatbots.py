"""Administration of LLM providers and chatbots with their versions (SPEC §2, §2.1, §5.1).

Chatbots are addressed by the public_id of their head (the editable working version). Provider
secrets are encrypted at rest; listings mask them. Functions flush but never commit: the caller
owns the transaction.
"""

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.crypto import encrypt_config, is_secret_field
from app.errors import BadRequest, NotFound
from app.models import Chatbot, HistoryMode, LlmProvider
from app.services.admin_identity import add_unique, for_team, get_team, require_text, team_slugs
from app.services.chatbots import publish_version

MASK = "****"


def encrypt_secrets(config: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Encrypt the secret-looking values of a provider or channel config (app.crypto)."""
    if not any(isinstance(v, str) and v and is_secret_field(k) for k, v in config.items()):
        return config
    try:
        secret_key = settings.effective_secret_key
    except RuntimeError as exc:
        raise BadRequest(str(exc)) from None
    return encrypt_config(config, secret_key)


def mask_config(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: MASK if v and is_secret_field(k) else v for k, v in config.items()}


def clean_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    cleaned: dict[str, Any] = {}
    for key, value in (config or {}).items():
        key = str(key).strip()
        if not key:
            raise BadRequest("Config keys may not be blank.")
        cleaned[key] = value
    return cleaned


# --- LLM providers ---------------------------------------------------------------------------


async def create_provider(
    session: AsyncSession,
    settings: Settings,
    team_slug: str,
    name: str,
    type: str,
    api_base: str | None = None,
    api_key: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> LlmProvider:
    """A team's LLM account. ``config`` holds extra settings (e.g. ``api_version`` for Azure)."""
    # Imported here: the LLM layer is only needed by this command.
    from app.llm import PROVIDER_TYPES
    from app.llm.openai_compat import DEFAULT_API_BASES, OPENAI_COMPATIBLE_TYPES

    name = require_text(name, "Provider name", 200)
    provider_type = (type or "").strip().lower()
    if provider_type not in PROVIDER_TYPES:
        raise BadRequest(
            f"Unknown provider type {type!r}: choose one of {', '.join(sorted(PROVIDER_TYPES))}."
        )
    full_config = clean_config(config)
    if api_base:
        api_base = api_base.strip()
        if not api_base.startswith(("http://", "https://")):
            raise BadRequest(f"The API base must be an http(s) URL, got {api_base!r}.")
        full_config["api_base"] = api_base
    elif provider_type in OPENAI_COMPATIBLE_TYPES and provider_type not in DEFAULT_API_BASES:
        raise BadRequest(f"Provider type {provider_type!r} needs an API base URL.")
    if api_key and api_key.strip():
        full_config["api_key"] = api_key.strip()
    team = await get_team(session, team_slug)
    conflict = f"Team {team.slug!r} already has a provider named {name!r}."
    existing = await session.scalar(
        select(LlmProvider.id).where(LlmProvider.team_id == team.id, LlmProvider.name == name)
    )
    if existing is not None:
        raise BadRequest(conflict)
    provider = LlmProvider(
        team_id=team.id,
        name=name,
        type=provider_type,
        config=encrypt_secrets(full_config, settings),
    )
    return await add_unique(session, provider, conflict)


@dataclass(frozen=True)
class ProviderSummary:
    id: int
    team: str
    name: str
    type: str
    config: dict[str, Any]  # secrets masked
    created_at: datetime


async def list_providers(
    session: AsyncSession, team_slug: str | None = None
) -> list[ProviderSummary]:
    query = select(LlmProvider).order_by(LlmProvider.team_id, LlmProvider.name)
    query = await for_team(session, query, LlmProvider.team_id, team_slug)
    slugs = await team_slugs(session)
    return [
        ProviderSummary(
            id=p.id,
            team=slugs[p.team_id],
            name=p.name,
            type=p.type,
            config=mask_config(p.config),
            created_at=p.created_at,
        )
        for p in await session.scalars(query)
    ]


async def _get_provider(session: AsyncSession, team_id: int, name: str) -> LlmProvider:
    provider = await session.scalar(
        select(LlmProvider).where(LlmProvider.team_id == team_id, LlmProvider.name == name.strip())
    )
    if provider is None:
        raise NotFound(f"The chatbot's team has no provider named {name!r}.")
    return provider


# --- chatbots --------------------------------------------------------------------------------

# Options of create_chatbot/update_chatbot -> Chatbot columns.
_COLUMNS = {
    "name": "name",
    "description": "description",
    "model": "llm_model",
    "system_prompt": "system_prompt",
    "temperature": "temperature",
    "max_tokens": "max_tokens",
    "history_mode": "history_mode",
    "max_history_length": "max_history_length",
    "token_limit": "token_limit",
    "source_material": "source_material",
    "allowlist": "participant_allowlist",
    "consent_text": "consent_text",
    "confirmation_text": "confirmation_text",
    "seed_message": "seed_message",
}
MAX_INT = 2**31 - 1  # the columns are 32-bit integers on PostgreSQL
_NULLABLE = {"max_tokens", "consent_text", "confirmation_text", "seed_message"}
UPDATABLE = frozenset(_COLUMNS) | {"provider_name"}


def _validated(values: dict[str, Any]) -> dict[str, Any]:
    """Check a complete bot config (SPEC §5.1); returns it keyed by column name."""
    v = dict(values)
    v["name"] = require_text(v["name"], "Chatbot name", 200)
    v["model"] = require_text(v["model"], "Model", 200)
    v["description"] = v["description"] or ""
    v["system_prompt"] = v["system_prompt"] or ""
    v["source_material"] = v["source_material"] or ""
    try:
        temperature = float(v["temperature"])
    except (TypeError, ValueError):
        temperature = -1.0
    if not 0 <= temperature <= 2:
        raise BadRequest(f"Temperature must be between 0 and 2, got {v['temperature']}.")
    v["temperature"] = temperature
    if v["max_tokens"] is not None and not 1 <= v["max_tokens"] <= MAX_INT:
        raise BadRequest("max_tokens must be a positive number (or unset for no limit).")
    try:
        v["history_mode"] = HistoryMode(str(v["history_mode"]).strip().lower()).value
    except ValueError:
        choices = ", ".join(m.value for m in HistoryMode)
        raise BadRequest(
            f"Unknown history mode {v['history_mode']!r}: choose one of {choices}."
        ) from None
    for field in ("max_history_length", "token_limit"):
        if not 1 <= v[field] <= MAX_INT:
            raise BadRequest(f"{field} must be a positive number.")
    allowlist = [v["allowlist"]] if isinstance(v["allowlist"], str) else v["allowlist"]
    v["allowlist"] = [str(item).strip() for item in allowlist if str(item).strip()]
    for field in ("consent_text", "confirmation_text", "seed_message"):
        v[field] = (v[field] or "").strip() or None
    if bool(v["consent_text"]) != bool(v["confirmation_text"]):
        raise BadRequest(
            "Conversational consent needs both a consent text and a confirmation text."
        )
    return {_COLUMNS[k]: v[k] for k in _COLUMNS}


async def create_chatbot(
    session: AsyncSession,
    team_slug: str,
    name: str,
    provider_name: str,
    model: str,
    system_prompt: str,
    temperature: float = 0.7,
    max_tokens: int | None = None,
    history_mode: str = HistoryMode.max_history_length,
    max_history_length: int = 30,
    token_limit: int = 8192,
    source_material: str = "",
    allowlist: Iterable[str] = (),
    consent_text: str | None = None,
    confirmation_text: str | None = None,
    seed_message: str | None = None,
    description: str = "",
) -> Chatbot:
    """A new chatbot: its head (working version 1, nothing published yet)."""
    columns = _validated(
        {
            "name": name, "description": description, "model": model,
            "system_prompt": system_prompt, "temperature": temperature, "max_tokens": max_tokens,
            "history_mode": history_mode, "max_history_length": max_history_length,
            "token_limit": token_limit, "source_material": source_material,
            "allowlist": allowlist, "consent_text": consent_text,
            "confirmation_text": confirmation_text, "seed_message": seed_message,
        }
    )  # fmt: skip
    team = await get_team(session, team_slug)
    provider = await _get_provider(session, team.id, provider_name)
    head = Chatbot(team_id=team.id, llm_provider_id=provider.id, version_number=1, **columns)
    session.add(head)
    await session.flush()
    return head


def _parse_uuid(public_id: str | uuid.UUID) -> uuid.UUID:
    try:
        return public_id if isinstance(public_id, uuid.UUID) else uuid.UUID(str(public_id).strip())
    except ValueError:
        raise NotFound(f"No chatbot with public id {public_id!r}.") from None


async def get_chatbot_head(
    session: AsyncSession, public_id: str | uuid.UUID, include_archived: bool = False
) -> Chatbot:
    """A chatbot's head by its public id (any team: the operator's view)."""
    row = await session.scalar(select(Chatbot).where(Chatbot.public_id == _parse_uuid(public_id)))
    if row is None:
        raise NotFound(f"No chatbot with public id {public_id!r}.")
    if not row.is_working_version:
        head_public_id = await session.scalar(
            select(Chatbot.public_id).where(Chatbot.id == row.working_version_id)
        )
        raise BadRequest(
            f"{public_id} is version {row.version_number} of a chatbot and versions cannot be "
            f"changed: use the chatbot's public id {head_public_id}."
        )
    if row.is_archived and not include_archived:
        raise BadRequest(f"Chatbot {public_id} is archived.")
    return row


async def update_chatbot(
    session: AsyncSession, public_id: str | uuid.UUID, **changes: Any
) -> Chatbot:
    """Edit the working version only; published versions never change.

    ``changes`` takes the keyword arguments of :func:`create_chatbot` (``provider_name``,
    ``model``, ...). ``None`` clears the optional ones (max_tokens, consent and confirmation
    texts, seed message).
    """
    unknown = set(changes) - UPDATABLE
    if unknown:
        raise BadRequest(f"Unknown chatbot field(s): {', '.join(sorted(unknown))}.")
    for key, value in changes.items():
        if value is None and key not in _NULLABLE:
            raise BadRequest(f"{key} may not be empty.")
    head = await get_chatbot_head(session, public_id)
    current = {option: getattr(head, column) for option, column in _COLUMNS.items()}
    columns = _validated(current | {k: v for k, v in changes.items() if k != "provider_name"})
    if "provider_name" in changes:
        provider = await _get_provider(session, head.team_id, changes["provider_name"])
        head.llm_provider_id = provider.id
    for column, value in columns.items():
        setattr(head, column, value)
    await session.flush()
    return head


async def publish_chatbot(
    session: AsyncSession,
    public_id: str | uuid.UUID,
    description: str = "",
    make_default: bool = True,
) -> Chatbot:
    """Publish the working version as version N (SPEC §2.1); returns the new version."""
    head = await get_chatbot_head(session, public_id)
    if head.llm_provider_id is None:
        raise BadRequest(f"Chatbot {public_id} has no LLM provider; set one before publishing.")
    return await publish_version(session, head, description=description, make_default=make_default)


@dataclass(frozen=True)
class ChatbotSummary:
    public_id: uuid.UUID
    team: str
    name: str
    description: str
    provider: str | None
    model: str
    published_version: int | None
    working_version: int  # the number the next publish gets
    archived: bool
    created_at: datetime


async def list_chatbots(
    session: AsyncSession, team_slug: str | None = None
) -> list[ChatbotSummary]:
    query = (
        select(Chatbot, LlmProvider.name)
        .outerjoin(LlmProvider, LlmProvider.id == Chatbot.llm_provider_id)
        .where(Chatbot.working_version_id.is_(None))
        .order_by(Chatbot.team_id, Chatbot.created_at, Chatbot.id)
    )
    query = await for_team(session, query, Chatbot.team_id, team_slug)
    heads = (await session.execute(query)).all()
    published_rows = await session.execute(
        select(Chatbot.working_version_id, Chatbot.version_number).where(
            Chatbot.is_published.is_(True),
            Chatbot.working_version_id.in_([head.id for head, _ in heads]),
        )
    )
    published = dict(published_rows.all())
    slugs = await team_slugs(session)
    return [
        ChatbotSummary(
            public_id=head.public_id,
            team=slugs[head.team_id],
            name=head.name,
            description=head.description,
            provider=provider_name,
            model=head.llm_model,
            published_version=published.get(head.id),
            working_version=head.version_number,
            archived=head.is_archived,
            created_at=head.created_at,
        )
        for head, provider_name in heads
    ]


async def archive_chatbot(session: AsyncSession, public_id: str | uuid.UUID) -> Chatbot:
    """Hide a chatbot from the API (404 for every version). Archiving twice is harmless."""
    head = await get_chatbot_head(session, public_id, include_archived=True)
    head.is_archived = True
    await session.flush()
    return head
