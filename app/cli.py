"""The ``chatbots`` command: run the service and administer teams, users, keys, chatbots, channels.

Each invocation reads fresh ``Settings``, opens its own engine, runs one service call in one
transaction (committed on success) and disposes the engine. Domain errors print a message on
stderr and exit 1. ``--json`` prints exactly one JSON document on stdout.

Start-up stays fast: the database layer, the services and uvicorn are imported inside the
commands, never at module import (litellm is never imported here).
"""

import asyncio
import dataclasses
import enum
import json
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from app.config import Settings

T = TypeVar("T")

app = typer.Typer(
    name="chatbots",
    help="Chatbots API: run the service and administer it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _group(name: str, help: str) -> typer.Typer:
    group = typer.Typer(help=help, no_args_is_help=True)
    app.add_typer(group, name=name)
    return group


db_app = _group("db", "Database schema migrations.")
team_app = _group("team", "Teams (tenants).")
user_app = _group("user", "Users and their team memberships.")
apikey_app = _group("apikey", "API keys (shown once at creation, stored hashed).")
provider_app = _group("provider", "LLM providers of a team (secrets encrypted at rest).")
chatbot_app = _group("chatbot", "Chatbots and their versions.")
channel_app = _group("channel", "Channels connecting chatbots to platforms.")

Opt = typer.Option
Json = Annotated[bool, Opt("--json", help="Print one JSON document on stdout.")]
TeamOpt = Annotated[str, Opt(help="Team slug.")]
TeamFilter = Annotated[str | None, Opt("--team", help="Only this team (slug).")]
EmailOpt = Annotated[str, Opt(help="The user's email.")]
ChatbotArg = Annotated[str, typer.Argument(metavar="PUBLIC_ID", help="The chatbot's public id.")]
ChannelArg = Annotated[int, typer.Argument(metavar="ID", help="The channel's id.")]
FROM_STDIN = "Use - to read it from standard input (keeps it out of the shell history)."


# --- plumbing ----------------------------------------------------------------------------------


def _fail(message: str) -> NoReturn:
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(1)


def _settings() -> "Settings":
    from pydantic import ValidationError

    from app.config import Settings

    try:
        return Settings()
    except ValidationError as exc:
        _fail(f"invalid settings: {exc}")


def _guarded(call: Callable[[], T]) -> T:
    """Domain and database errors become a message and exit code 1, never a traceback."""
    from sqlalchemy.exc import DBAPIError

    from app.errors import DomainError

    try:
        return call()
    except DomainError as exc:
        _fail(exc.detail)
    except (DBAPIError, OSError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        if "no such table" in reason or ("relation" in reason and "does not exist" in reason):
            reason += " (run `chatbots db upgrade` first)"
        _fail(f"database error: {reason}")


def _run(
    work: Callable[["AsyncSession", "Settings"], Awaitable[T]],
    settings: "Settings | None" = None,
) -> T:
    """Run ``work`` in one committed transaction on a fresh engine (migrating the embedded
    default first, as the service itself would)."""
    settings = settings or _settings()

    async def main() -> T:
        from app.db import make_engine, make_sessionmaker

        engine = make_engine(settings.database_url, pool_size=1, max_overflow=1)
        try:
            if settings.should_auto_migrate:
                from app.migrate import upgrade_database

                await upgrade_database(engine)
            async with make_sessionmaker(engine)() as session:
                result = await work(session, settings)
                await session.commit()
                return result
        finally:
            await engine.dispose()

    return _guarded(lambda: asyncio.run(main()))


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, default=_jsonable, indent=2, ensure_ascii=False))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, dict | list):
        return json.dumps(value, default=_jsonable, ensure_ascii=False)
    return str(value)


def _print_table(rows: Sequence[Any], columns: Sequence[str]) -> None:
    if not rows:
        typer.echo("(none)")
        return
    cells = [
        [_cell(row[c] if isinstance(row, dict) else getattr(row, c)) for c in columns]
        for row in rows
    ]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    for line in [list(columns), *cells]:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


def _list(rows: Sequence[Any], columns: Sequence[str], as_json: bool) -> None:
    if as_json:
        _print_json([dataclasses.asdict(r) if dataclasses.is_dataclass(r) else r for r in rows])
    else:
        _print_table(rows, columns)


def _done(as_json: bool, data: dict[str, Any], message: str) -> None:
    if as_json:
        _print_json(data)
    else:
        typer.echo(message)


def _read_secret(value: str | None) -> str | None:
    if value == "-":
        return sys.stdin.readline().rstrip("\r\n")
    return value


def _parse_pairs(pairs: Sequence[str] | None) -> dict[str, str]:
    config: dict[str, str] = {}
    for pair in pairs or ():
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            _fail(f"--config expects KEY=VALUE, got {pair!r}.")
        config[key.strip()] = value
    return config


def _display_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host



# --- serve, db, demo ---------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str, Opt(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, Opt(min=1, max=65535, help="Port to listen on.")] = 8000,
    workers: Annotated[int, Opt(min=1, help="Worker processes.")] = 1,
) -> None:
    """Run the API server. The embedded default (SQLite) migrates itself and creates a demo."""
    from app.config import DEFAULT_DATABASE_URL

    settings = _settings()
    embedded = settings.database_url == DEFAULT_DATABASE_URL
    if embedded or settings.should_auto_migrate:

        async def prepare(session: "AsyncSession", settings: "Settings") -> Any:
            from app.demo import ensure_demo

            return await ensure_demo(session, settings) if embedded else None

        info = _run(prepare, settings)
        if info is not None:
            title = "Chatbots API, embedded default (SQLite database ./chatbots.db)"
            _print_demo(info, f"http://{_display_host(host)}:{port}", title)

    import uvicorn

    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        access_log=False,
        loop="auto",
    )


def _print_demo(info: Any, base_url: str, title: str) -> None:
    from app.demo import demo_curl

    lines = ["", title, f"  Demo chatbot: {info.chatbot_public_id} (model {info.model})"]
    if info.api_key:
        lines.append(f"  Demo API key (shown once, save it now): {info.api_key}")
    lines += ["", "Try it:", demo_curl(base_url, info.chatbot_public_id, info.api_key)]
    lines += ["", f"API docs: {base_url}/docs", ""]
    typer.echo("\n".join(lines))
    sys.stdout.flush()


@db_app.command("upgrade")
def db_upgrade(as_json: Json = False) -> None:
    """Upgrade the database schema to the latest revision (safe to repeat)."""
    from sqlalchemy.engine import make_url

    from app.db import make_engine
    from app.migrate import upgrade_database

    settings = _settings()

    async def main() -> None:
        engine = make_engine(settings.database_url, pool_size=1, max_overflow=0)
        try:
            await upgrade_database(engine)
        finally:
            await engine.dispose()

    _guarded(lambda: asyncio.run(main()))
    url = make_url(settings.database_url).render_as_string(hide_password=True)
    _done(as_json, {"upgraded": True, "database": url}, f"Database {url} is up to date.")


@app.command()
def demo(
    base_url: Annotated[str, Opt(help="The service's address, for the example curl.")] = (
        "http://127.0.0.1:8000"
    ),
    as_json: Json = False,
) -> None:
    """Create the demo team, user, API key and chatbot (once) and show how to call it."""
    from app.demo import demo_curl, ensure_demo

    info = _run(ensure_demo)
    base_url = base_url.rstrip("/")
    if as_json:
        curl = demo_curl(base_url, info.chatbot_public_id, info.api_key)
        _print_json(dataclasses.asdict(info) | {"curl": curl})
    else:
        _print_demo(info, base_url, "Chatbots API demo")


# --- teams and users ---------------------------------------------------------------------------


@team_app.command("create")
def team_create(
    slug: Annotated[str, Opt(help="Unique short name: lower-case letters, digits, - and _.")],
    name: Annotated[str, Opt(help="Display name.")],
    as_json: Json = False,
) -> None:
    """Create a team."""
    from app.services.admin import create_team

    team = _run(lambda s, _: create_team(s, slug, name))
    data = {"id": team.id, "slug": team.slug, "name": team.name}
    _done(as_json, data, f"Created team {team.slug!r} (id {team.id}).")


@team_app.command("list")
def team_list(as_json: Json = False) -> None:
    """List teams."""
    from app.services.admin import list_teams

    teams = _run(lambda s, _: list_teams(s))
    rows = [{"id": t.id, "slug": t.slug, "name": t.name, "created_at": t.created_at} for t in teams]
    _list(rows, ["id", "slug", "name", "created_at"], as_json)


@user_app.command("create")
def user_create(
    email: Annotated[str, Opt(help="Email (stored lower-cased).")],
    team: TeamOpt,
    role: Annotated[str, Opt(help="admin, chatbot_admin or member.")],
    password: Annotated[
        str | None, Opt(help=f"Web login password (new users only). {FROM_STDIN}")
    ] = None,
    as_json: Json = False,
) -> None:
    """Create a user in a team; an existing user is only added to the team."""
    from app.services.admin import create_user

    password = _read_secret(password)
    added = _run(lambda s, _: create_user(s, email, team, role, password))
    user, membership = added.user, added.membership
    data = {
        "id": user.id, "email": user.email, "team": added.team.slug, "role": membership.role,
        "user_created": added.user_created,
    }  # fmt: skip
    what = "Created user {} in" if added.user_created else "Added existing user {} to"
    message = f"{what.format(user.email)} team {added.team.slug!r} as {membership.role}."
    _done(as_json, data, message)


def _set_active(email: str, active: bool, as_json: bool) -> None:
    from app.services.admin import set_user_active

    user = _run(lambda s, _: set_user_active(s, email, active))
    state = "active" if active else "inactive"
    _done(as_json, {"email": user.email, "is_active": user.is_active}, f"{user.email} is {state}.")


@user_app.command("deactivate")
def user_deactivate(email: EmailOpt, as_json: Json = False) -> None:
    """Deactivate a user: all their credentials stop working."""
    _set_active(email, False, as_json)


@user_app.command("activate")
def user_activate(email: EmailOpt, as_json: Json = False) -> None:
    """Activate a user again."""
    _set_active(email, True, as_json)


@user_app.command("remove")
def user_remove(email: EmailOpt, team: TeamOpt, as_json: Json = False) -> None:
    """Remove a user from a team (and revoke their API keys of that team)."""
    from app.services.admin import normalize_email, remove_member

    revoked = _run(lambda s, _: remove_member(s, email, team))
    data = {"email": normalize_email(email), "team": team, "revoked_api_keys": revoked}
    _done(as_json, data, f"Removed {email} from team {team!r}; revoked {revoked} API key(s).")


# --- API keys ----------------------------------------------------------------------------------


@apikey_app.command("create")
def apikey_create(
    email: Annotated[str, Opt(help="The key's user (a member of the team).")],
    team: TeamOpt,
    name: Annotated[str, Opt(help="What the key is for.")],
    write: Annotated[bool, Opt("--write", help="Allow POST requests (default read-only).")] = False,
    expires_days: Annotated[int | None, Opt(help="Expire after this many days.")] = None,
    as_json: Json = False,
) -> None:
    """Create an API key. The key is printed once; only its hash is stored."""
    from app.services.admin import create_api_key

    key, raw = _run(lambda s, _: create_api_key(s, email, team, name, write, expires_days))
    if as_json:
        data = {"key": raw, "prefix": key.prefix, "read_only": key.read_only}
        _print_json(data | {"expires_at": key.expires_at})
        return
    access = "read-only" if key.read_only else "read-write"
    expiry = f", expires {key.expires_at:%Y-%m-%d %H:%M} UTC" if key.expires_at else ""
    typer.echo(f"Created {access} API key {key.prefix!r} ({name}{expiry}).")
    typer.echo(f"Key (shown once, store it now): {raw}")


@apikey_app.command("list")
def apikey_list(team: TeamFilter = None, as_json: Json = False) -> None:
    """List API keys (never the keys themselves)."""
    from app.services.admin import list_api_keys

    keys = _run(lambda s, _: list_api_keys(s, team))
    columns = ["prefix", "name", "team", "email", "read_only", "status", "expires_at"]
    _list(keys, [*columns, "last_used_at"], as_json)


@apikey_app.command("revoke")
def apikey_revoke(
    prefix: Annotated[str, typer.Argument(help="The key's prefix (the part before the dot).")],
    as_json: Json = False,
) -> None:
    """Revoke an API key, permanently."""
    from app.services.admin import revoke_api_key

    key = _run(lambda s, _: revoke_api_key(s, prefix))
    data = {"prefix": key.prefix, "revoked_at": key.revoked_at}
    _done(as_json, data, f"Revoked API key {key.prefix!r}.")


# --- LLM providers -----------------------------------------------------------------------------

ConfigPairs = Annotated[
    list[str] | None, Opt("--config", help="A setting KEY=VALUE; repeatable.")
]


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

    api_key = _read_secret(api_key)
    extra = _parse_pairs(config)
    provider = _run(
        lambda s, settings: create_provider(s, settings, team, name, type, api_base, api_key, extra)
    )
    data = {"id": provider.id, "name": provider.name, "type": provider.type}
    _done(as_json, data, f"Created provider {provider.name!r} ({provider.type}, id {provider.id}).")


@provider_app.command("list")
def provider_list(team: TeamFilter = None, as_json: Json = False) -> None:
    """List LLM providers (secrets masked)."""
    from app.services.admin import list_providers

    providers = _run(lambda s, _: list_providers(s, team))
    _list(providers, ["id", "team", "name", "type", "config"], as_json)


# --- chatbots ----------------------------------------------------------------------------------

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
    head = _run(
        lambda s, _: create_chatbot(s, team, name, provider, model, system_prompt, **options)
    )
    data = {"public_id": head.public_id, "name": head.name}
    _done(as_json, data, f"Created chatbot {head.name!r}: {head.public_id}")


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
        _fail("nothing to update: give at least one option (see --help).")
    head = _run(lambda s, _: update_chatbot(s, public_id, **changes))
    data = {
        "public_id": head.public_id, "version_number": head.version_number,
        "changed": sorted(changes),
    }  # fmt: skip
    message = f"Updated the working version (v{head.version_number}) of {head.public_id}."
    _done(as_json, data, message)


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

    version = _run(lambda s, _: publish_chatbot(s, public_id, description, make_default))
    data = {
        "version_number": version.version_number, "public_id": version.public_id,
        "published": version.is_published, "chatbot_public_id": public_id,
    }  # fmt: skip
    published = " (now the published one)" if version.is_published else ""
    message = f"Published version {version.version_number}{published}: {version.public_id}"
    _done(as_json, data, message)


@chatbot_app.command("list")
def chatbot_list(team: TeamFilter = None, as_json: Json = False) -> None:
    """List chatbots."""
    from app.services.admin import list_chatbots

    chatbots = _run(lambda s, _: list_chatbots(s, team))
    columns = ["public_id", "team", "name", "provider", "model", "published_version"]
    _list(chatbots, [*columns, "working_version", "archived"], as_json)


@chatbot_app.command("archive")
def chatbot_archive(public_id: ChatbotArg, as_json: Json = False) -> None:
    """Archive a chatbot: the API answers 404 for it and all its versions."""
    from app.services.admin import archive_chatbot

    head = _run(lambda s, _: archive_chatbot(s, public_id))
    data = {"public_id": head.public_id, "archived": head.is_archived}
    _done(as_json, data, f"Archived chatbot {head.public_id}.")


# --- channels ----------------------------------------------------------------------------------


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

    async def work(session: "AsyncSession", settings: "Settings") -> tuple[Any, str | None]:
        channel = await create_channel(session, settings, chatbot, platform, name, pairs)
        generated = channel.config.get("widget_token") if "widget_token" not in pairs else None
        if generated:  # the embed key was made here: show it
            generated = decrypt_config({"t": generated}, settings.effective_secret_key)["t"]
        return channel, generated

    channel, widget_token = _run(work)
    data = {
        "id": channel.id, "external_id": channel.external_id, "platform": channel.platform,
        "name": channel.name,
    }  # fmt: skip
    if widget_token:
        data["widget_token"] = widget_token
    if as_json:
        _print_json(data)
        return
    typer.echo(f"Created {channel.platform} channel {channel.id} ({channel.external_id}).")
    if widget_token:
        typer.echo(f"Widget embed key (X-Embed-Key): {widget_token}")


def _set_enabled(channel_id: int, enabled: bool, message: str | None, as_json: bool) -> None:
    from app.services.admin import set_channel_enabled

    channel = _run(lambda s, _: set_channel_enabled(s, channel_id, enabled, message))
    state = "enabled" if enabled else "disabled"
    data = {
        "id": channel.id, "enabled": channel.enabled, "disabled_message": channel.disabled_message
    }  # fmt: skip
    _done(as_json, data, f"Channel {channel.id} is {state}.")


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


@channel_app.command("list")
def channel_list(team: TeamFilter = None, as_json: Json = False) -> None:
    """List channels (secrets masked)."""
    from app.services.admin import list_channels

    channels = _run(lambda s, _: list_channels(s, team))
    columns = ["id", "team", "chatbot_public_id", "platform", "name", "enabled", "config"]
    _list(channels, columns, as_json)


def main() -> None:
    app(prog_name="chatbots")


if __name__ == "__main__":
    main()
