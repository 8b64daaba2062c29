"""The ``chatbots`` command, end to end: commands run through typer's CliRunner against the test
database, and rows are read back with a short-lived engine of the test's own.

Tests are plain ``def``: the CLI calls ``asyncio.run`` itself.
"""

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from typer.testing import CliRunner, Result

from app import cli
from app.auth.api_keys import key_matches
from app.auth.passwords import verify_password
from app.config import Settings
from app.crypto import decrypt_config, sha256_hex
from app.db import make_engine, make_sessionmaker, utcnow
from app.demo import DEMO_EMAIL, choose_demo_model, demo_curl, ensure_demo
from app.errors import BadRequest
from app.models import ApiKey, Channel, Chatbot, LlmProvider, Membership, Team, User

T = TypeVar("T")
SECRET_KEY = "test-secret"
runner = CliRunner()

# Every command, for the --help and --json checks.
COMMANDS = [
    ["serve"], ["db", "upgrade"], ["demo"],
    ["team", "create"], ["team", "list"],
    ["user", "create"], ["user", "deactivate"], ["user", "activate"], ["user", "remove"],
    ["user", "set-password"],
    ["apikey", "create"], ["apikey", "list"], ["apikey", "revoke"],
    ["provider", "create"], ["provider", "list"],
    ["chatbot", "create"], ["chatbot", "update"], ["chatbot", "publish"], ["chatbot", "list"],
    ["chatbot", "archive"],
    ["channel", "create"], ["channel", "disable"], ["channel", "enable"], ["channel", "list"],
    ["channel", "rotate-embed-key"],
    ["worker"], ["delivery", "list"], ["delivery", "show"], ["delivery", "retry"],
    ["secrets", "rotate"],
]  # fmt: skip


# --- helpers -----------------------------------------------------------------------------------


def invoke(*args: str, input: str | None = None) -> Result:
    return runner.invoke(cli.app, list(args), input=input)


def ok(*args: str, input: str | None = None) -> Result:
    result = invoke(*args, input=input)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def ok_json(*args: str, input: str | None = None) -> Any:
    return json.loads(ok(*args, "--json", input=input).stdout)


def fails(*args: str, message: str) -> Result:
    result = invoke(*args)
    assert result.exit_code == 1, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""
    return result


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def engine_for(database_url: str) -> AsyncEngine:
    """An engine with the service's pool sizes (the settings are their one source)."""
    settings = Settings(_env_file=None)
    return make_engine(
        database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )


def db(database_url: str, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    async def main() -> T:
        engine = engine_for(database_url)
        try:
            async with make_sessionmaker(engine)() as session:
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def one(database_url: str, statement: Any) -> Any:
    return db(database_url, lambda s: s.scalar(statement))


def all_rows(database_url: str, statement: Any) -> list[Any]:
    async def work(session: AsyncSession) -> list[Any]:
        return list(await session.scalars(statement))

    return db(database_url, work)


def count(database_url: str, model: Any, *where: Any) -> int:
    return one(database_url, select(func.count()).select_from(model).where(*where))


def team_id(database_url: str, slug: str) -> int:
    return one(database_url, select(Team.id).where(Team.slug == slug))


def chatbot_rows(database_url: str, public_id: str) -> tuple[Chatbot, list[Chatbot]]:
    """The head and its versions (by number)."""
    head = one(database_url, select(Chatbot).where(Chatbot.public_id == uuid.UUID(public_id)))
    versions = all_rows(
        database_url,
        select(Chatbot)
        .where(Chatbot.working_version_id == head.id)
        .order_by(Chatbot.version_number),
    )
    return head, versions


# --- fixtures ----------------------------------------------------------------------------------


# Settings that would change what the commands do.
AMBIENT = ("CHATBOTS_DEMO_MODEL", "CHATBOTS_AUTO_MIGRATE", "OPENAI_API_KEY", "ANTHROPIC_API_KEY")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, database_url: str) -> str:
    monkeypatch.setenv("CHATBOTS_DATABASE_URL", database_url)
    monkeypatch.setenv("CHATBOTS_SECRET_KEY", SECRET_KEY)
    for name in AMBIENT:
        monkeypatch.delenv(name, raising=False)
    return database_url


@pytest.fixture
def team(env: str) -> str:
    slug = unique("team")
    ok("team", "create", "--slug", slug, "--name", "Test team")
    return slug


@pytest.fixture
def member(team: str) -> str:
    email = f"{unique('user')}@example.com"
    ok("user", "create", "--email", email, "--team", team, "--role", "admin")
    return email


@pytest.fixture
def provider(team: str) -> str:
    ok("provider", "create", "--team", team, "--name", "offline", "--type", "echo")
    return "offline"


@pytest.fixture
def chatbot(team: str, provider: str) -> str:
    data = ok_json(
        "chatbot", "create", "--team", team, "--name", "Helper", "--provider", provider,
        "--model", "echo", "--system-prompt", "You help.",
    )  # fmt: skip
    return data["public_id"]


# --- the command itself ------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_and_json(command: list[str]) -> None:
    result = ok(*command, "--help")
    assert "Usage" in result.stdout
    if command not in (["serve"], ["worker"]):  # they print no data
        assert "--json" in result.stdout


def test_importing_the_cli_is_light() -> None:
    code = (
        "import sys, app.cli; "
        "print([m for m in ('sqlalchemy', 'fastapi', 'uvicorn', 'litellm', 'httpx') "
        "if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    assert out.stdout.strip() == "[]"


def test_database_errors_are_messages(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CHATBOTS_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("CHATBOTS_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:1/none")
    fails("team", "list", message="database error")
    # A database that was never migrated (and auto-migration off): a hint, not a traceback.
    monkeypatch.setenv("CHATBOTS_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/empty.db")
    monkeypatch.setenv("CHATBOTS_AUTO_MIGRATE", "false")
    fails("team", "list", message="chatbots db upgrade")


def test_db_upgrade(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/fresh.db"
    monkeypatch.setenv("CHATBOTS_DATABASE_URL", url)
    monkeypatch.setenv("CHATBOTS_AUTO_MIGRATE", "false")
    assert ok_json("db", "upgrade")["upgraded"] is True
    assert ok_json("db", "upgrade")["upgraded"] is True  # idempotent
    assert ok_json("team", "create", "--slug", "x", "--name", "X")["slug"] == "x"


# --- teams and users ---------------------------------------------------------------------------


def test_team_create_and_list(env: str) -> None:
    slug = unique("acme")
    data = ok_json("team", "create", "--slug", slug, "--name", "Acme Inc.")
    assert data["slug"] == slug and isinstance(data["id"], int)
    assert any(t["slug"] == slug and t["name"] == "Acme Inc." for t in ok_json("team", "list"))
    assert slug in ok("team", "list").stdout

    fails("team", "create", "--slug", slug, "--name", "Again", message="already exists")
    fails("team", "create", "--slug", "Not a slug!", "--name", "X", message="Invalid team slug")
    assert count(env, Team, Team.slug == slug) == 1


def test_user_create_normalizes_email_and_joins_other_teams(team: str, env: str) -> None:
    local = unique("Mixed.Case")
    data = ok_json(
        "user", "create", "--email", f"  {local}@Example.COM ", "--team", team,
        "--role", "chatbot_admin", "--password", "correct horse",
    )  # fmt: skip
    email = f"{local.lower()}@example.com"
    assert data["email"] == email and data["user_created"] is True
    user = one(env, select(User).where(User.email == email))
    assert verify_password("correct horse", user.password_hash)

    other = unique("other")
    ok("team", "create", "--slug", other, "--name", "Other")
    data = ok_json("user", "create", "--email", email.upper(), "--team", other, "--role", "member")
    assert data["user_created"] is False and data["id"] == user.id
    assert count(env, User, User.email == email) == 1
    roles = all_rows(env, select(Membership.role).where(Membership.user_id == user.id))
    assert sorted(roles) == ["chatbot_admin", "member"]

    fails("user", "create", "--email", email, "--team", other, "--role", "admin",
          message="already a member")  # fmt: skip


def test_user_bad_input_writes_nothing(team: str, env: str) -> None:
    email = f"{unique('nobody')}@example.com"
    fails("user", "create", "--email", email, "--team", unique("missing"), "--role", "admin",
          message="No team")  # fmt: skip
    fails("user", "create", "--email", email, "--team", team, "--role", "owner",
          message="Unknown role")  # fmt: skip
    fails("user", "create", "--email", "not-an-email", "--team", team, "--role", "admin",
          message="Invalid email")  # fmt: skip
    fails("user", "create", "--email", email, "--team", team, "--role", "admin",
          "--password", "short", message="at least 8")  # fmt: skip
    assert count(env, User, User.email == email) == 0


def test_user_deactivate_activate_and_remove(team: str, member: str, env: str) -> None:
    ok("user", "deactivate", "--email", member)
    assert one(env, select(User.is_active).where(User.email == member)) is False
    fails("apikey", "create", "--email", member, "--team", team, "--name", "k",
          message="inactive")  # fmt: skip
    assert ok_json("user", "activate", "--email", member)["is_active"] is True
    assert one(env, select(User.is_active).where(User.email == member)) is True

    prefix = ok_json("apikey", "create", "--email", member, "--team", team, "--name", "k")["prefix"]
    data = ok_json("user", "remove", "--email", member, "--team", team)
    assert data["revoked_api_keys"] == 1
    user_id = one(env, select(User.id).where(User.email == member))
    assert count(env, Membership, Membership.user_id == user_id) == 0
    assert one(env, select(ApiKey.revoked_at).where(ApiKey.prefix == prefix)) is not None
    fails("user", "remove", "--email", member, "--team", team, message="not a member")
    fails("user", "deactivate", "--email", f"{unique('ghost')}@example.com", message="No user")


# --- API keys ----------------------------------------------------------------------------------


def test_apikey_is_read_only_by_default_and_hashed(team: str, member: str, env: str) -> None:
    data = ok_json("apikey", "create", "--email", member, "--team", team, "--name", "ci")
    assert set(data) == {"key", "prefix", "read_only", "expires_at"}
    key = one(env, select(ApiKey).where(ApiKey.prefix == data["prefix"]))
    assert data["key"].startswith(f"{key.prefix}.")
    assert key_matches(data["key"], key.key_hash) and data["key"] not in key.key_hash
    assert not key_matches(data["key"] + "x", key.key_hash)
    assert key.read_only is True and data["read_only"] is True
    assert key.expires_at is None and key.revoked_at is None
    assert key.team_id == team_id(env, team)


def test_apikey_write_and_expiry(team: str, member: str, env: str) -> None:
    data = ok_json(
        "apikey", "create", "--email", member, "--team", team, "--name", "w", "--write",
        "--expires-days", "7",
    )  # fmt: skip
    key = one(env, select(ApiKey).where(ApiKey.prefix == data["prefix"]))
    assert key.read_only is False and data["read_only"] is False
    assert abs(key.expires_at - (utcnow() + timedelta(days=7))) < timedelta(minutes=1)
    assert data["expires_at"] == key.expires_at.isoformat()

    fails("apikey", "create", "--email", member, "--team", team, "--name", "w",
          "--expires-days", "0", message="between 1 and")  # fmt: skip


def test_apikey_human_output_shows_the_key_once(team: str, member: str) -> None:
    out = ok("apikey", "create", "--email", member, "--team", team, "--name", "human").stdout
    assert "read-only" in out and "shown once" in out


def test_apikey_needs_a_member_of_the_team(team: str, env: str) -> None:
    outsider = f"{unique('outsider')}@example.com"
    other = unique("other")
    ok("team", "create", "--slug", other, "--name", "Other")
    ok("user", "create", "--email", outsider, "--team", other, "--role", "admin")
    fails("apikey", "create", "--email", outsider, "--team", team, "--name", "x",
          message="not a member")  # fmt: skip
    fails("apikey", "create", "--email", outsider, "--team", unique("none"), "--name", "x",
          message="No team")  # fmt: skip
    user_id = one(env, select(User.id).where(User.email == outsider))
    assert count(env, ApiKey, ApiKey.user_id == user_id) == 0


def test_apikey_list_never_shows_keys(team: str, member: str, env: str) -> None:
    created = ok_json("apikey", "create", "--email", member, "--team", team, "--name", "listed")
    key_hash = one(env, select(ApiKey.key_hash).where(ApiKey.prefix == created["prefix"]))
    listed = ok_json("apikey", "list", "--team", team)
    assert [k["prefix"] for k in listed] == [created["prefix"]]
    assert listed[0]["status"] == "active" and listed[0]["email"] == member
    for out in (ok("apikey", "list", "--json").stdout, ok("apikey", "list", "--team", team).stdout):
        assert created["key"] not in out and key_hash not in out
    fails("apikey", "list", "--team", unique("none"), message="No team")


def test_apikey_revoke_is_permanent(team: str, member: str, env: str) -> None:
    prefix = ok_json("apikey", "create", "--email", member, "--team", team, "--name", "r")["prefix"]
    ok("apikey", "revoke", prefix)
    revoked_at = one(env, select(ApiKey.revoked_at).where(ApiKey.prefix == prefix))
    assert revoked_at is not None
    assert ok_json("apikey", "revoke", prefix)["prefix"] == prefix  # twice is fine
    assert one(env, select(ApiKey.revoked_at).where(ApiKey.prefix == prefix)) == revoked_at
    assert ok_json("apikey", "list", "--team", team)[0]["status"] == "revoked"
    fails("apikey", "revoke", "zzzzzzzz", message="No API key")


# --- providers ---------------------------------------------------------------------------------


def test_provider_secret_is_encrypted_at_rest(team: str, env: str) -> None:
    secret = f"sk-{uuid.uuid4().hex}"
    data = ok_json(
        "provider", "create", "--team", team, "--name", "openai", "--type", "openai",
        "--api-key", secret, "--api-base", "http://127.0.0.1:9/v1",
    )  # fmt: skip
    row = one(env, select(LlmProvider).where(LlmProvider.id == data["id"]))
    assert row.type == "openai" and row.team_id == team_id(env, team)
    assert secret not in json.dumps(row.config)
    assert row.config["api_base"] == "http://127.0.0.1:9/v1"
    assert decrypt_config(row.config, SECRET_KEY)["api_key"] == secret

    listed = ok_json("provider", "list", "--team", team)
    assert listed[0]["config"]["api_key"] == "****"
    assert secret not in ok("provider", "list", "--team", team).stdout


def test_provider_key_from_stdin(team: str, env: str) -> None:
    data = ok_json(
        "provider", "create", "--team", team, "--name", "groq", "--type", "groq",
        "--api-key", "-", input="gsk-from-stdin\n",
    )  # fmt: skip
    row = one(env, select(LlmProvider).where(LlmProvider.id == data["id"]))
    assert decrypt_config(row.config, SECRET_KEY)["api_key"] == "gsk-from-stdin"


def test_provider_bad_input_writes_nothing(team: str, env: str) -> None:
    fails("provider", "create", "--team", team, "--name", "p", "--type", "skynet",
          message="Unknown provider type")  # fmt: skip
    fails("provider", "create", "--team", team, "--name", "p", "--type", "openai_compatible",
          message="API base")  # fmt: skip
    fails("provider", "create", "--team", unique("none"), "--name", "p", "--type", "openai",
          message="No team")  # fmt: skip
    assert count(env, LlmProvider, LlmProvider.team_id == team_id(env, team)) == 0
    ok("provider", "create", "--team", team, "--name", "p", "--type", "echo")
    fails("provider", "create", "--team", team, "--name", "p", "--type", "echo",
          message="already has a provider")  # fmt: skip


# --- chatbots ----------------------------------------------------------------------------------


def test_chatbot_create_stores_the_bot_config(team: str, provider: str, env: str) -> None:
    data = ok_json(
        "chatbot", "create", "--team", team, "--name", "Nurse", "--provider", provider,
        "--model", "echo", "--system-prompt", "Be kind.", "--temperature", "0.2",
        "--max-tokens", "200", "--history-mode", "summarize", "--max-history-length", "12",
        "--token-limit", "4000", "--source-material", "FAQ", "--allowlist", "+15550001",
        "--allowlist", "a@example.com", "--consent-text", "We store messages.",
        "--confirmation-text", "Reply 1 to agree.", "--seed-message", "Hi!",
        "--description", "Night shift",
    )  # fmt: skip
    head, versions = chatbot_rows(env, data["public_id"])
    assert versions == [] and head.working_version_id is None and head.version_number == 1
    assert (head.name, head.description, head.llm_model) == ("Nurse", "Night shift", "echo")
    assert (head.temperature, head.max_tokens, head.history_mode) == (0.2, 200, "summarize")
    assert (head.max_history_length, head.token_limit, head.source_material) == (12, 4000, "FAQ")
    assert head.participant_allowlist == ["+15550001", "a@example.com"]
    assert head.consent_text == "We store messages."
    assert head.confirmation_text == "Reply 1 to agree."
    assert head.seed_message == "Hi!" and head.system_prompt == "Be kind."
    provider_id = one(env, select(LlmProvider.id).where(LlmProvider.team_id == head.team_id))
    assert head.llm_provider_id == provider_id

    listed = ok_json("chatbot", "list", "--team", team)
    assert [(c["public_id"], c["published_version"], c["working_version"]) for c in listed] == [
        (data["public_id"], None, 1)
    ]


def test_chatbot_bad_input_writes_nothing(team: str, provider: str, env: str) -> None:
    base = ["chatbot", "create", "--team", team, "--name", "B", "--provider", provider,
            "--model", "echo", "--system-prompt", "p"]  # fmt: skip
    fails(*base, "--temperature", "3", message="between 0 and 2")
    fails(*base, "--consent-text", "We store messages.", message="confirmation text")
    fails(*base, "--confirmation-text", "Reply 1", message="consent text")
    fails(*base, "--history-mode", "forever", message="Unknown history mode")
    fails(*base, "--max-tokens", "0", message="max_tokens")
    fails(*base, "--token-limit", "99999999999", message="token_limit")
    base[base.index(provider)] = "missing"
    fails(*base, message="no provider named")
    assert count(env, Chatbot, Chatbot.team_id == team_id(env, team)) == 0
    fails("chatbot", "create", "--team", unique("none"), "--name", "B", "--provider", provider,
          "--model", "echo", "--system-prompt", "p", message="No team")  # fmt: skip


def test_chatbot_publish_numbers_versions(chatbot: str, env: str) -> None:
    first = ok_json("chatbot", "publish", chatbot, "--description", "first")
    second = ok_json("chatbot", "publish", chatbot)
    assert (first["version_number"], second["version_number"]) == (1, 2)
    assert first["public_id"] != chatbot and second["public_id"] != first["public_id"]

    head, versions = chatbot_rows(env, chatbot)
    assert head.version_number == 3
    assert [v.version_number for v in versions] == [1, 2]
    assert [str(v.public_id) for v in versions] == [first["public_id"], second["public_id"]]
    assert [v.is_published for v in versions] == [False, True]
    assert versions[0].version_description == "first"

    third = ok_json("chatbot", "publish", chatbot, "--no-make-default")
    assert third["version_number"] == 3 and third["published"] is False
    head, versions = chatbot_rows(env, chatbot)
    assert head.version_number == 4
    assert [v.is_published for v in versions] == [False, True, False]
    listed = {c["public_id"]: c for c in ok_json("chatbot", "list")}
    assert (listed[chatbot]["published_version"], listed[chatbot]["working_version"]) == (2, 4)


def test_first_publish_is_published_even_without_make_default(chatbot: str, env: str) -> None:
    assert ok_json("chatbot", "publish", chatbot, "--no-make-default")["published"] is True


def test_chatbot_update_changes_the_head_only(chatbot: str, team: str, env: str) -> None:
    v1 = ok_json("chatbot", "publish", chatbot)
    ok("provider", "create", "--team", team, "--name", "second", "--type", "echo")
    data = ok_json(
        "chatbot", "update", chatbot, "--temperature", "1.5", "--system-prompt", "New prompt",
        "--max-tokens", "64", "--allowlist", "x@example.com", "--provider", "second",
        "--consent-text", "Consent?", "--confirmation-text", "Reply 1",
    )  # fmt: skip
    assert data["version_number"] == 2
    head, versions = chatbot_rows(env, chatbot)
    assert (head.temperature, head.system_prompt, head.max_tokens) == (1.5, "New prompt", 64)
    assert head.participant_allowlist == ["x@example.com"] and head.consent_text == "Consent?"
    assert head.name == "Helper" and head.llm_model == "echo"  # untouched
    second_id = one(env, select(LlmProvider.id).where(LlmProvider.name == "second",
                                                      LlmProvider.team_id == head.team_id))
    assert head.llm_provider_id == second_id
    (version,) = versions
    assert str(version.public_id) == v1["public_id"]
    assert (version.temperature, version.system_prompt) == (0.7, "You help.")
    assert version.max_tokens is None
    assert version.participant_allowlist == [] and version.consent_text is None
    assert version.llm_provider_id != second_id

    # Clearing optional values; a version cannot be edited; nothing given is an error.
    ok("chatbot", "update", chatbot, "--max-tokens", "0", "--clear-allowlist",
       "--consent-text", "", "--confirmation-text", "")  # fmt: skip
    head, _ = chatbot_rows(env, chatbot)
    assert head.max_tokens is None and head.participant_allowlist == []
    assert head.consent_text is None and head.confirmation_text is None
    fails("chatbot", "update", v1["public_id"], "--temperature", "1", message="versions cannot")
    fails("chatbot", "update", chatbot, message="nothing to update")
    fails("chatbot", "update", chatbot, "--temperature", "2.5", message="between 0 and 2")
    fails("chatbot", "update", chatbot, "--consent-text", "Only this", message="confirmation")
    fails("chatbot", "update", str(uuid.uuid4()), "--name", "x", message="No chatbot")
    fails("chatbot", "update", "not-a-uuid", "--name", "x", message="No chatbot")
    head, _ = chatbot_rows(env, chatbot)
    assert head.temperature == 1.5 and head.consent_text is None


def test_chatbot_archive(chatbot: str, env: str) -> None:
    ok("chatbot", "publish", chatbot)
    assert ok_json("chatbot", "archive", chatbot)["archived"] is True
    head, _ = chatbot_rows(env, chatbot)
    assert head.is_archived is True
    ok("chatbot", "archive", chatbot)  # twice is fine
    listed = {c["public_id"]: c for c in ok_json("chatbot", "list")}
    assert listed[chatbot]["archived"] is True
    fails("chatbot", "publish", chatbot, message="archived")
    fails("chatbot", "update", chatbot, "--name", "x", message="archived")
    fails("channel", "create", "--chatbot", chatbot, "--platform", "telegram", message="archived")


# --- channels ----------------------------------------------------------------------------------


def test_channel_create_encrypts_and_rejects_duplicates(chatbot: str, env: str) -> None:
    data = ok_json(
        "channel", "create", "--chatbot", chatbot, "--platform", "telegram", "--name", "TG",
        "--config", "bot_token=123:secret-token", "--config", "username=helper_bot",
    )  # fmt: skip
    row = one(env, select(Channel).where(Channel.id == data["id"]))
    assert str(row.external_id) == data["external_id"]
    assert (row.platform, row.name, row.enabled, row.deleted) == ("telegram", "TG", True, False)
    head, _ = chatbot_rows(env, chatbot)
    assert row.chatbot_id == head.id and row.team_id == head.team_id
    assert "secret-token" not in json.dumps(row.config) and row.config["username"] == "helper_bot"
    assert decrypt_config(row.config, SECRET_KEY)["bot_token"] == "123:secret-token"

    fails("channel", "create", "--chatbot", chatbot, "--platform", "telegram",
          message="already has a telegram channel")  # fmt: skip
    assert count(env, Channel, Channel.chatbot_id == head.id, Channel.platform == "telegram") == 1
    ok("channel", "create", "--chatbot", chatbot, "--platform", "slack", "--config", "bot_token=x")


def test_channel_bad_input_writes_nothing(chatbot: str, env: str) -> None:
    fails("channel", "create", "--chatbot", chatbot, "--platform", "pigeon",
          message="Unknown platform")  # fmt: skip
    fails("channel", "create", "--chatbot", chatbot, "--platform", "telegram", "--config", "oops",
          message="KEY=VALUE")  # fmt: skip
    fails("channel", "create", "--chatbot", str(uuid.uuid4()), "--platform", "telegram",
          message="No chatbot")  # fmt: skip
    head, _ = chatbot_rows(env, chatbot)
    assert count(env, Channel, Channel.chatbot_id == head.id) == 0


@pytest.mark.parametrize(
    ("platform", "config", "message"),
    [
        ("telegram", [], "A telegram channel needs bot_token: --config bot_token=..."),
        ("slack", ["bot_token= "], "A slack channel needs bot_token"),
        ("email", [], "needs from_address"),
        ("api", [], "needs callback_url"),
        ("facebook", ["page_id=1"], "needs account_sid, auth_token"),
        ("whatsapp", [], "needs provider=<meta_cloud_api, twilio, turnio>"),
        ("whatsapp", ["provider=pigeon"], "needs provider=<meta_cloud_api, twilio, turnio>"),
        ("whatsapp", ["provider=twilio", "account_sid=AC1"], "needs auth_token, number"),
        ("whatsapp", ["provider=meta_cloud_api", "access_token=x", "phone_number_id=1"],
         "needs template_name, template_language"),
    ],
)
def test_a_channel_missing_what_its_platform_needs_is_refused_and_not_saved(
    chatbot: str, env: str, platform: str, config: list[str], message: str
) -> None:
    args = [arg for pair in config for arg in ("--config", pair)]
    fails("channel", "create", "--chatbot", chatbot, "--platform", platform, *args, message=message)
    head, _ = chatbot_rows(env, chatbot)
    assert count(env, Channel, Channel.chatbot_id == head.id) == 0


def test_embedded_widget_channel_gets_a_token(chatbot: str, env: str) -> None:
    data = ok_json(
        "channel", "create", "--chatbot", chatbot, "--platform", "embedded_widget",
        "--config", "allowed_domains=example.com, *.example.org",
    )  # fmt: skip
    assert len(data["widget_token"]) == 32
    row = one(env, select(Channel).where(Channel.id == data["id"]))
    assert row.config["allowed_domains"] == ["example.com", "*.example.org"]
    assert decrypt_config(row.config, SECRET_KEY)["widget_token"] == data["widget_token"]
    assert row.embed_key_hash == sha256_hex(data["widget_token"])  # found by its hash (X-Embed-Key)


def test_rotating_an_embed_key_stores_the_new_keys_hash(chatbot: str, env: str) -> None:
    created = ok_json("channel", "create", "--chatbot", chatbot, "--platform", "embedded_widget",
                      "--config", "allowed_domains=example.com")  # fmt: skip
    rotated = ok_json("channel", "rotate-embed-key", str(created["id"]))
    assert len(rotated["widget_token"]) == 32 and rotated["widget_token"] != created["widget_token"]
    row = one(env, select(Channel).where(Channel.id == created["id"]))
    assert row.embed_key_hash == sha256_hex(rotated["widget_token"])
    assert decrypt_config(row.config, SECRET_KEY)["widget_token"] == rotated["widget_token"]
    assert row.config["allowed_domains"] == ["example.com"]
    assert "shown once" in ok("channel", "rotate-embed-key", str(created["id"])).stdout


def test_only_a_widget_channels_embed_key_can_be_rotated(chatbot: str, env: str) -> None:
    created = ok_json("channel", "create", "--chatbot", chatbot, "--platform", "web")
    fails("channel", "rotate-embed-key", str(created["id"]), message="not an embedded_widget channel")
    fails("channel", "rotate-embed-key", "999999999", message="No channel with id 999999999")


def test_an_api_channel_gets_a_signing_secret_and_needs_a_public_https_callback(
    chatbot: str, env: str
) -> None:
    # A private or loopback callback is refused (SSRF): nothing saved.
    for url in ("https://127.0.0.1/hook", "http://example.com/hook", "https://10.0.0.5/hook"):
        fails("channel", "create", "--chatbot", chatbot, "--platform", "api",
              "--config", f"callback_url={url}", message="callback")  # fmt: skip
    head, _ = chatbot_rows(env, chatbot)
    assert count(env, Channel, Channel.chatbot_id == head.id) == 0
    # A public https address (a literal one: no DNS lookup leaves this machine).
    data = ok_json("channel", "create", "--chatbot", chatbot, "--platform", "api",
                   "--config", "callback_url=https://93.184.216.34/hook")  # fmt: skip
    assert data["signing_secret"].startswith("whsec_")
    row = one(env, select(Channel).where(Channel.id == data["id"]))
    assert data["signing_secret"] not in json.dumps(row.config)  # stored encrypted
    assert decrypt_config(row.config, SECRET_KEY)["signing_secret"] == data["signing_secret"]


def test_channel_disable_and_enable(chatbot: str, env: str) -> None:
    channel_id = ok_json("channel", "create", "--chatbot", chatbot, "--platform", "whatsapp",
                         "--config", "provider=turnio", "--config", "auth_token=t")["id"]  # fmt: skip
    data = ok_json("channel", "disable", str(channel_id), "--message", "Closed for maintenance.")
    assert data["enabled"] is False and data["disabled_message"] == "Closed for maintenance."
    row = one(env, select(Channel).where(Channel.id == channel_id))
    assert row.enabled is False and row.disabled_message == "Closed for maintenance."

    ok("channel", "enable", str(channel_id))
    assert one(env, select(Channel.enabled).where(Channel.id == channel_id)) is True
    fails("channel", "disable", "999999999", message="No channel")
    fails("channel", "enable", "99999999999999999999", message="No channel")


def test_channel_list_masks_secrets(chatbot: str, team: str) -> None:
    ok("channel", "create", "--chatbot", chatbot, "--platform", "telegram",
       "--config", "bot_token=999:very-secret")  # fmt: skip
    (listed,) = ok_json("channel", "list", "--team", team)
    assert listed["chatbot_public_id"] == chatbot and listed["config"] == {"bot_token": "****"}
    assert "very-secret" not in ok("channel", "list", "--team", team).stdout
    assert "very-secret" not in ok("channel", "list", "--json").stdout


# --- the demo ----------------------------------------------------------------------------------


def _rows_count(session: AsyncSession) -> Awaitable[list[int]]:
    async def counts() -> list[int]:
        models = (Team, User, Membership, ApiKey, LlmProvider, Chatbot)
        return [await session.scalar(select(func.count()).select_from(m)) for m in models]

    return counts()


def test_ensure_demo_creates_once(env: str) -> None:
    slug = unique("demo")

    async def twice() -> tuple[Any, Any, list[int], list[int]]:
        engine = engine_for(env)
        try:
            async with make_sessionmaker(engine)() as session:
                first = await ensure_demo(session, Settings(), team_slug=slug)
                await session.commit()
                before = await _rows_count(session)
                second = await ensure_demo(session, Settings(), team_slug=slug)
                await session.commit()
                after = await _rows_count(session)
            return first, second, before, after
        finally:
            await engine.dispose()

    first, second, before, after = asyncio.run(twice())
    assert first.created is True and first.api_key and first.model == "echo/echo"
    assert second.created is False and second.api_key is None
    assert second.chatbot_public_id == first.chatbot_public_id
    assert before == after

    prefix = first.api_key.split(".")[0]
    key = one(env, select(ApiKey).where(ApiKey.prefix == prefix))
    assert key_matches(first.api_key, key.key_hash) and key.read_only is False
    assert key.team_id == team_id(env, slug)
    user = one(env, select(User).where(User.id == key.user_id))
    assert user.email == DEMO_EMAIL
    role = one(env, select(Membership.role).where(Membership.user_id == user.id,
                                                  Membership.team_id == key.team_id))
    assert role == "admin"
    head, versions = chatbot_rows(env, first.chatbot_public_id)
    assert head.version_number == 2
    assert [(v.version_number, v.is_published) for v in versions] == [(1, True)]


def test_demo_model_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CHATBOTS_DEMO_MODEL", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)

    def choice() -> tuple[str, str, str | None]:
        c = choose_demo_model(Settings(_env_file=None))
        return c.provider_type, c.model, c.api_key

    assert choice() == ("echo", "echo", None)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "ak")
    assert choice() == ("anthropic", "claude-sonnet-4-6", "ak")
    monkeypatch.setenv("OPENAI_API_KEY", "ok")
    assert choice() == ("openai", "gpt-4.1-mini", "ok")
    monkeypatch.setenv("CHATBOTS_DEMO_MODEL", "anthropic/claude-haiku-4-5")
    assert choice() == ("anthropic", "claude-haiku-4-5", "ak")
    monkeypatch.setenv("CHATBOTS_DEMO_MODEL", "openrouter/meta/llama-3")
    assert choice() == ("openrouter", "meta/llama-3", None)
    monkeypatch.setenv("CHATBOTS_DEMO_MODEL", "echo")
    assert choice() == ("echo", "echo", None)
    monkeypatch.setenv("CHATBOTS_DEMO_MODEL", "gpt-4.1")
    with pytest.raises(BadRequest, match="provider_type"):
        choice()


def test_demo_curl() -> None:
    assert demo_curl("http://127.0.0.1:8000/", "abc", "pre.secret") == (
        "curl -sS -X POST http://127.0.0.1:8000/channels/api/abc/incoming_message "
        "-H 'X-api-key: pre.secret' -H 'Content-Type: application/json' "
        """-d '{"message": "Hello!"}'"""
    )
    later = demo_curl("http://127.0.0.1:8000", "abc", None)
    *explanation, curl = later.splitlines()
    assert curl.startswith("curl ") and '-H "X-api-key: $CHATBOTS_DEMO_KEY"' in curl
    assert all(line.startswith("#") for line in explanation)
    assert "chatbots apikey create" in later and "--write" in later


def test_demo_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A fresh SQLite file: migrated automatically, the demo created on the first call only.
    monkeypatch.setenv("CHATBOTS_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/demo.db")
    for name in AMBIENT:
        monkeypatch.delenv(name, raising=False)
    first = ok_json("demo", "--base-url", "http://localhost:9000")
    assert first["created"] is True and first["api_key"] in first["curl"]
    assert "http://localhost:9000/channels/api/" in first["curl"]
    second = ok_json("demo")
    assert second["created"] is False and second["api_key"] is None
    assert second["chatbot_public_id"] == first["chatbot_public_id"]
    assert "$CHATBOTS_DEMO_KEY" in ok("demo").stdout


class _FakeUvicorn:
    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def run(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append((args, kwargs))


@pytest.fixture
def fake_uvicorn(monkeypatch: pytest.MonkeyPatch) -> _FakeUvicorn:
    import uvicorn

    fake = _FakeUvicorn()
    monkeypatch.setattr(uvicorn, "run", fake.run)
    return fake


def test_serve_embedded_default_prints_the_demo(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_uvicorn: _FakeUvicorn
) -> None:
    monkeypatch.chdir(tmp_path)  # the default database is ./chatbots.db
    for name in ("CHATBOTS_DATABASE_URL", "CHATBOTS_SECRET_KEY", "CHATBOTS_DEMO_MODEL",
                 "CHATBOTS_AUTO_MIGRATE", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)

    out = ok("serve", "--host", "0.0.0.0", "--port", "8123", "--workers", "2").stdout
    assert (tmp_path / "chatbots.db").exists()
    assert "curl -sS -X POST http://127.0.0.1:8123/channels/api/" in out
    assert "X-api-key: " in out and "$CHATBOTS_DEMO_KEY" not in out
    ((args, kwargs),) = fake_uvicorn.calls
    assert args == ("app.main:create_app",)
    assert kwargs["factory"] is True
    assert (kwargs["host"], kwargs["port"], kwargs["workers"]) == ("0.0.0.0", 8123, 2)

    again = ok("serve").stdout
    assert "$CHATBOTS_DEMO_KEY" in again and "http://127.0.0.1:8000/channels/api/" in again
    assert len(fake_uvicorn.calls) == 2


def test_serve_elsewhere_prints_no_demo(env: str, fake_uvicorn: _FakeUvicorn) -> None:
    out = ok("serve", "--port", "8124").stdout
    assert "curl" not in out
    ((_, kwargs),) = fake_uvicorn.calls
    assert (kwargs["host"], kwargs["port"], kwargs["workers"]) == ("127.0.0.1", 8124, 1)


# --- deliveries ------------------------------------------------------------------------------


@pytest.fixture
def failed_delivery(chatbot: str, team: str, env: str) -> str:
    """A delivery that failed, on a telegram channel of ``chatbot`` (rows made directly)."""
    from app.models import ChatSession, Delivery, Participant

    async def work(session: AsyncSession) -> str:
        head = await session.scalar(select(Chatbot).where(Chatbot.public_id == uuid.UUID(chatbot)))
        channel = Channel(team_id=head.team_id, chatbot_id=head.id, platform="telegram", config={})
        participant = Participant(team_id=head.team_id, platform="telegram", identifier="42")
        session.add_all([channel, participant])
        await session.flush()
        chat = ChatSession(team_id=head.team_id, chatbot_id=head.id, channel_id=channel.id,
                           participant_id=participant.id, platform="telegram")  # fmt: skip
        session.add(chat)
        await session.flush()
        delivery = Delivery(team_id=head.team_id, session_id=chat.id, channel_id=channel.id,
                            platform="telegram", recipient="42", message_text="Hi", status="failed",
                            attempts=6, last_error="Bad Request: chat not found")  # fmt: skip
        session.add(delivery)
        await session.commit()
        return str(delivery.public_id)

    return db(env, work)


def test_delivery_list_show_and_retry(failed_delivery: str, team: str) -> None:
    [listed] = ok_json("delivery", "list", "--team", team)
    assert (listed["id"], listed["team"], listed["status"]) == (failed_delivery, team, "failed")
    assert ok_json("delivery", "list", "--team", team, "--status", "sent") == []
    shown = ok_json("delivery", "show", failed_delivery)
    assert (shown["status"], shown["attempts"], shown["last_error"]) == ("failed", 6, "Bad Request: chat not found")
    assert "status: failed" in ok("delivery", "show", failed_delivery).stdout
    retried = ok_json("delivery", "retry", failed_delivery)
    assert (retried["status"], retried["attempts"], retried["last_error"]) == ("pending", 0, None)
    fails("delivery", "retry", failed_delivery,
          message="Only a failed or skipped delivery can be retried (this one is pending).")  # fmt: skip


def test_delivery_bad_input_is_a_message(env: str, team: str) -> None:
    fails("delivery", "show", "not-a-uuid", message="Delivery not found.")
    fails("delivery", "retry", str(uuid.uuid4()), message="Delivery not found.")
    fails("delivery", "list", "--status", "lost", message="Unknown status 'lost'")
