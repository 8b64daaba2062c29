"""What the service runs: ``provider``, ``chatbot`` and ``channel`` commands."""

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer

from app.cli._common import (
    FROM_STDIN,
    Json,
    Opt,
    TeamFilter,
    TeamOpt,
    command_group,
    fail,
    print_done,
    print_json,
    print_list,
    read_secret,
    run,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from app.config import Settings

provider_app = command_group("LLM providers of a team (secrets encrypted at rest).")
chatbot_app = command_group("Chatbots and their versions.")
channel_app = command_group("Channels connecting chatbots to platforms.")

ConfigPairs = Annotated[
    list[str] | None, Opt("--config", help="A setting KEY=VALUE; repeatable.")
]


def _parse_pairs(pairs: Sequence[str] | None) -> dict[str, str]:
    config: dict[str, str] = {}
    for pair in pairs or ():
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            fail(f"--config expects KEY=VALUE, got {pair!r}.")
        config[key.strip()] = value
    return config


# --- LLM providers -----------------------------------------------------------------------------


@provider_app.command("create")
def provider_create(
    team: TeamOpt,
    name: Annotated[str, Opt(help="The name chatbots use (unique in the team).")],
    type: Annotated[str, Opt("--type", help="openai, azure, groq, anthropic, google, echo, ...")],
    api_base: Annotated[str | None, Opt(help="Base URL (openai_compatible, azure).")] = None,
    api_key: Annotated[str | None, Opt(help=f"The provider's API key. {FROM_STDIN}")] = None,
    config: ConfigPairs = None,
    as_json: Json = False,
) -> None:
    """Add an LLM provider to a team. Secrets are encrypted with CHATBOTS_SECRET_KEY.

    Extra settings go in --config, e.g. --config api_version=2024-10-21 for Azure.
    """
    from app.services.admin import create_provider

    api_key = read_secret(api_key)
    extra = _parse_pairs(config)
    provider = run(
        lambda s, settings: create_provider(s, settings, team, name, type, api_base, api_key, extra)
    )
    data = {"id": provider.id, "name": provider.name, "type": provider.type}
    message = f"Created provider {provider.name!r} ({provider.type}, id {provider.id})."
    print_done(as_json, data, message)


@provider_app.command("list")
def provider_list(team: TeamFilter = None, as_json: Json = False) -> None:
    """List LLM providers (secrets masked)."""
    from app.services.admin import list_providers

    providers = run(lambda s, _: list_providers(s, team))
    print_list(providers, ["id", "team", "name", "type", "config"], as_json)


# --- chatbots ----------------------------------------------------------------------------------

ChatbotArg = Annotated[str, typer.Argument(metavar="PUBLIC_ID", help="The chatbot's public id.")]
Temperature = Annotated[float | None, Opt(help="0 to 2 (default 0.7).")]
MaxTokens = Annotated[int | None, Opt(help="Reply length limit (update: 0 removes it).")]
HistoryMode = Annotated[
    str | None, Opt(help="max_history_length (default), truncate_tokens or summarize.")
]
MaxHistory = Annotated[int | None, Opt(help="Messages kept by max_history_length (default 30).")]
TokenLimit = Annotated[int | None, Opt(help="Token budget of the history (default 8192).")]
SourceMaterial = Annotated[str | None, Opt(help="Text the prompt can use as {source_material}.")]
Allowlist = Annotated[
    list[str] | None,
    Opt("--allowlist", help="A participant allowed to chat; repeatable (none: anyone)."),
]
ConsentText = Annotated[str | None, Opt(help="Consent text (with --confirmation-text).")]
ConfirmationText = Annotated[str | None, Opt(help="Asks to reply 1 (with --consent-text).")]
SeedMessage = Annotated[str | None, Opt(help="The message the bot answers after consent.")]
Description = Annotated[str | None, Opt(help="Description.")]
ProviderName = Annotated[str, Opt("--provider", help="The name of a team's LLM provider.")]


@chatbot_app.command("create")
def chatbot_create(
    team: TeamOpt,
    name: Annotated[str, Opt(help="Chatbot name.")],
    provider: ProviderName,
    model: Annotated[str, Opt(help="Model, e.g. gpt-4.1-mini.")],
    system_prompt: Annotated[str, Opt(help="System prompt template.")],
    temperature: Temperature = 0.7,
    max_tokens: MaxTokens = None,
    history_mode: HistoryMode = "max_history_length",
    max_history_length: MaxHistory = 30,
    token_limit: TokenLimit = 8192,
    source_material: SourceMaterial = "",
    allowlist: Allowlist = None,
    consent_text: ConsentText = None,
    confirmation_text: ConfirmationText = None,
    seed_message: SeedMessage = None,
    description: Description = "",
    as_json: Json = False,
) -> None:
    """Create a chatbot (its working version; `chatbot publish` makes version 1)."""
    from app.services.admin import create_chatbot

    options = {
        "temperature": temperature, "max_tokens": max_tokens, "history_mode": history_mode,
        "max_history_length": max_history_length, "token_limit": token_limit,
        "source_material": source_material, "allowlist": allowlist or [],
        "consent_text": consent_text, "confirmation_text": confirmation_text,
        "seed_message": seed_message, "description": description,
    }  # fmt: skip
    head = run(
        lambda s, _: create_chatbot(s, team, name, provider, model, system_prompt, **options)
    )
    data = {"public_id": head.public_id, "name": head.name}
    print_done(as_json, data, f"Created chatbot {head.name!r}: {head.public_id}")


@chatbot_app.command("update")
def chatbot_update(
    public_id: ChatbotArg,
    name: Annotated[str | None, Opt(help="Chatbot name.")] = None,
    provider: Annotated[str | None, Opt(help="The name of a team's LLM provider.")] = None,
    model: Annotated[str | None, Opt(help="Model.")] = None,
    system_prompt: Annotated[str | None, Opt(help="System prompt template.")] = None,
    temperature: Temperature = None,
    max_tokens: MaxTokens = None,
    history_mode: HistoryMode = None,
    max_history_length: MaxHistory = None,
    token_limit: TokenLimit = None,
    source_material: SourceMaterial = None,
    allowlist: Allowlist = None,
    clear_allowlist: Annotated[bool, Opt("--clear-allowlist", help="Let anyone chat.")] = False,
    consent_text: ConsentText = None,
    confirmation_text: ConfirmationText = None,
    seed_message: SeedMessage = None,
    description: Description = None,
    as_json: Json = False,
) -> None:
    """Change the working version; published versions never change.

    Only the options given change. Empty --consent-text and --confirmation-text remove consent.
    """
    from app.services.admin import update_chatbot

    given = {
        "name": name, "provider_name": provider, "model": model, "system_prompt": system_prompt,
        "temperature": temperature, "history_mode": history_mode,
        "max_history_length": max_history_length, "token_limit": token_limit,
        "source_material": source_material, "consent_text": consent_text,
        "confirmation_text": confirmation_text, "seed_message": seed_message,
        "description": description,
    }  # fmt: skip
    changes: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if max_tokens is not None:
        changes["max_tokens"] = max_tokens or None
    if allowlist or clear_allowlist:
        changes["allowlist"] = [] if clear_allowlist else allowlist
    if not changes:
        fail("nothing to update: give at least one option (see --help).")
    head = run(lambda s, _: update_chatbot(s, public_id, **changes))
    data = {
        "public_id": head.public_id, "version_number": head.version_number,
        "changed": sorted(changes),
    }  # fmt: skip
    message = f"Updated the working version (v{head.version_number}) of {head.public_id}."
    print_done(as_json, data, message)


@chatbot_app.command("publish")
def chatbot_publish(
    public_id: ChatbotArg,
    description: Annotated[str, Opt(help="What changed in this version.")] = "",
    make_default: Annotated[
        bool,
        Opt("--make-default/--no-make-default", help="Serve the new version by default."),
    ] = True,
    as_json: Json = False,
) -> None:
    """Publish the working version as the next version number."""
    from app.services.admin import publish_chatbot

    version = run(lambda s, _: publish_chatbot(s, public_id, description, make_default))
    data = {
        "version_number": version.version_number, "public_id": version.public_id,
        "published": version.is_published, "chatbot_public_id": public_id,
    }  # fmt: skip
    published = " (now the published one)" if version.is_published else ""
    message = f"Published version {version.version_number}{published}: {version.public_id}"
    print_done(as_json, data, message)


@chatbot_app.command("list")
def chatbot_list(team: TeamFilter = None, as_json: Json = False) -> None:
    """List chatbots."""
    from app.services.admin import list_chatbots

    chatbots = run(lambda s, _: list_chatbots(s, team))
    columns = ["public_id", "team", "name", "provider", "model", "published_version"]
    print_list(chatbots, [*columns, "working_version", "archived"], as_json)


@chatbot_app.command("archive")
def chatbot_archive(public_id: ChatbotArg, as_json: Json = False) -> None:
    """Archive a chatbot: the API answers 404 for it and all its versions."""
    from app.services.admin import archive_chatbot

    head = run(lambda s, _: archive_chatbot(s, public_id))
    data = {"public_id": head.public_id, "archived": head.is_archived}
    print_done(as_json, data, f"Archived chatbot {head.public_id}.")


# --- channels ----------------------------------------------------------------------------------

# Secrets a channel gets when not given, and how the CLI names them when it shows them.
GENERATED_SECRETS = {
    "widget_token": "Widget embed key (X-Embed-Key)",
    "signing_secret": "Webhook signing secret",
}
ChannelArg = Annotated[int, typer.Argument(metavar="ID", help="The channel's id.")]


@channel_app.command("create")
def channel_create(
    chatbot: Annotated[str, Opt(help="The chatbot's public id.")],
    platform: Annotated[str, Opt(help="telegram, whatsapp, slack, email, api, ...")],
    name: Annotated[str | None, Opt(help="Channel name.")] = None,
    config: ConfigPairs = None,
    as_json: Json = False,
) -> None:
    """Connect a chatbot to a platform (one channel per chatbot and platform).

    Settings go in --config (secrets are encrypted), e.g. --config bot_token=... for Telegram.

    A widget takes --config allowed_domains=example.com,*.example.org and gets an embed key.
    """
    from app.crypto import decrypt_config
    from app.services.admin import create_channel

    pairs = _parse_pairs(config)

    async def work(session: "AsyncSession", settings: "Settings") -> tuple[Any, dict[str, str]]:
        channel = await create_channel(session, settings, chatbot, platform, name, pairs)
        # Secrets made here (not given): shown once, now.
        made = {k: v for k, v in channel.config.items() if k in GENERATED_SECRETS and k not in pairs}
        return channel, decrypt_config(made, settings.encryption_keys)

    channel, generated = run(work)
    data = {
        "id": channel.id, "external_id": channel.external_id, "platform": channel.platform,
        "name": channel.name, **generated,
    }  # fmt: skip
    if as_json:
        print_json(data)
        return
    typer.echo(f"Created {channel.platform} channel {channel.id} ({channel.external_id}).")
    for key, value in generated.items():
        typer.echo(f"{GENERATED_SECRETS[key]} (shown once): {value}")


def _set_enabled(channel_id: int, enabled: bool, message: str | None, as_json: bool) -> None:
    from app.services.admin import set_channel_enabled

    channel = run(lambda s, _: set_channel_enabled(s, channel_id, enabled, message))
    state = "enabled" if enabled else "disabled"
    data = {
        "id": channel.id, "enabled": channel.enabled, "disabled_message": channel.disabled_message
    }  # fmt: skip
    print_done(as_json, data, f"Channel {channel.id} is {state}.")


@channel_app.command("disable")
def channel_disable(
    channel_id: ChannelArg,
    message: Annotated[str | None, Opt(help="The reply while the channel is disabled.")] = None,
    as_json: Json = False,
) -> None:
    """Disable a channel: incoming messages get the disabled message; nothing is sent."""
    _set_enabled(channel_id, False, message, as_json)


@channel_app.command("enable")
def channel_enable(channel_id: ChannelArg, as_json: Json = False) -> None:
    """Enable a channel again."""
    _set_enabled(channel_id, True, None, as_json)


@channel_app.command("rotate-embed-key")
def channel_rotate_embed_key(channel_id: ChannelArg, as_json: Json = False) -> None:
    """Give a widget channel a new embed key; the old one stops working at once."""
    from app.services.admin import rotate_widget_token

    channel, token = run(lambda s, settings: rotate_widget_token(s, settings, channel_id))
    message = f"{GENERATED_SECRETS['widget_token']} of channel {channel.id} (shown once): {token}"
    print_done(as_json, {"id": channel.id, "widget_token": token}, message)


@channel_app.command("list")
def channel_list(team: TeamFilter = None, as_json: Json = False) -> None:
    """List channels (secrets masked)."""
    from app.services.admin import list_channels

    channels = run(lambda s, _: list_channels(s, team))
    columns = ["id", "team", "chatbot_public_id", "platform", "name", "enabled", "config"]
    print_list(channels, columns, as_json)
