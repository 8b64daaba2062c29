"""Key derivation and rotation (README "Key rotation"): HKDF, ``CHATBOTS_SECRET_KEY_FALLBACKS``
and ``chatbots secrets rotate``.

End to end on a database of its own (SQLite, or a new PostgreSQL database when the suite runs
on PostgreSQL), since a rotation rewrites every row of the database: data written under key A
(and a provider key written by the release before HKDF), the service started with key B and
fallback A, the rotation run as an operator runs it (the installed ``chatbots`` command, in a
process of its own), then the service with key B alone. Real ASGI app, real delivery worker,
loopback fakes of the LLM and of Telegram; nothing of ours is mocked.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError
from sqlalchemy import select
from typer.testing import CliRunner

from app import cli
from app.config import Settings
from app.crypto import HKDF_INFO, HKDF_SALT, decrypt_config, derive_fernet_key, encrypt, encrypt_config
from app.db import make_engine, make_sessionmaker
from app.main import create_app
from app.models import Channel, LlmProvider, Team
from app.services.admin_channels import create_channel
from app.services.delivery_worker import DeliveryWorker
from app.services.secrets_rotation import rotate_secrets
from tests.factories import Widget, World, add_widget, make_world
from tests.own_database import own_database
from tests.test_delivery_worker import FakeTelegram

KEY_A = "key-a-" + "A" * 40
KEY_B = "key-b-" + "B" * 40
KEY_LOST = "key-lost-" + "L" * 40  # a key the service is never given
PROVIDER_KEY = "sk-rotation-" + "p" * 20
BOT_TOKEN = "424242:rotation-bot-token"
PAGE = "https://app.example.com"
# derive_fernet_key("test-secret-key"), computed once by the RFC 5869 steps below; a change of
# salt, info, length or hash changes it and makes every stored secret unreadable.
KNOWN_ANSWER = b"WGiHQnSJ8rmdPCh2FBLY7H608fEtaltjBZRHnNShiXY="


def rfc5869_sha256(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF written out from RFC 5869 with the standard library: extract, then expand."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm, counter = okm + block, counter + 1
    return okm[:length]


def pre_hkdf_encrypt(value: str, secret_key: str) -> str:
    """What the release before HKDF stored: Fernet under sha256(prefix + secret), written out."""
    digest = hashlib.sha256(b"chatbots-api/encryption/" + secret_key.encode()).digest()
    return "enc:" + Fernet(base64.urlsafe_b64encode(digest)).encrypt(value.encode()).decode()


# --- the derivation and the key list -------------------------------------------------------------


def test_hkdf_derivation_matches_rfc5869_and_is_not_the_bare_hash() -> None:
    derived = derive_fernet_key("test-secret-key")
    assert derived == KNOWN_ANSWER
    assert derived == base64.urlsafe_b64encode(rfc5869_sha256(b"test-secret-key", HKDF_SALT, HKDF_INFO))
    assert HKDF_INFO == b"chatbots-api field encryption v1"
    bare = [hashlib.sha256(b"test-secret-key").digest(),
            hashlib.sha256(b"chatbots-api/encryption/test-secret-key").digest()]  # fmt: skip
    assert base64.urlsafe_b64decode(derived) not in bare


def test_new_values_are_written_under_the_current_key_and_read_with_any() -> None:
    stored = encrypt("sk-new", (KEY_B, KEY_A))
    assert decrypt_config({"api_key": stored}, KEY_B) == {"api_key": "sk-new"}
    with pytest.raises(ValueError, match="CHATBOTS_SECRET_KEY_FALLBACKS"):
        decrypt_config({"api_key": stored}, KEY_A)
    old = encrypt("sk-old", KEY_A)
    assert decrypt_config({"api_key": old}, (KEY_B, KEY_A)) == {"api_key": "sk-old"}


def test_values_written_before_hkdf_are_still_read() -> None:
    old = pre_hkdf_encrypt("sk-from-the-old-release", KEY_A)
    assert decrypt_config({"api_key": old}, KEY_A) == {"api_key": "sk-from-the-old-release"}
    assert decrypt_config({"api_key": old}, (KEY_B, KEY_A)) == {"api_key": "sk-from-the-old-release"}


def test_the_decryption_cache_never_serves_a_value_once_its_key_is_removed() -> None:
    config = {"bot_token": encrypt(f"token-{uuid.uuid4()}", KEY_A)}
    assert decrypt_config(config, (KEY_B, KEY_A))["bot_token"].startswith("token-")  # now cached
    with pytest.raises(ValueError):
        decrypt_config(config, (KEY_B,))


@pytest.mark.parametrize(
    "given, expected",
    [
        ("", ()),
        ("old-1", ("old-1",)),
        (" old-1 , old-2 ,", ("old-1", "old-2")),
        ('["old,with,commas", "old-2"]', ("old,with,commas", "old-2")),
    ],
)
def test_fallbacks_are_comma_separated_or_a_json_list(given: str, expected: tuple[str, ...], monkeypatch) -> None:
    monkeypatch.setenv("CHATBOTS_SECRET_KEY_FALLBACKS", given)
    settings = Settings(secret_key="current", _env_file=None)
    assert settings.secret_key_fallbacks == expected
    assert settings.encryption_keys == ("current", *expected)


@pytest.mark.parametrize("given", ['["s3cr3t-key', '["s3cr3t-key"] extra', '["s3cr3t-key", 7]'])
def test_malformed_fallbacks_fail_at_start_without_echoing_a_key(given: str, monkeypatch) -> None:
    monkeypatch.setenv("CHATBOTS_SECRET_KEY_FALLBACKS", given)
    with pytest.raises(ValidationError, match="secret_key_fallbacks") as raised:
        Settings(secret_key="current", _env_file=None)
    assert "s3cr3t" not in str(raised.value)


def test_rotate_refuses_to_run_without_a_secret_key(monkeypatch) -> None:
    monkeypatch.setenv("CHATBOTS_DATABASE_URL", "postgresql+asyncpg://nobody@127.0.0.1:9/none")
    monkeypatch.delenv("CHATBOTS_SECRET_KEY", raising=False)
    result = CliRunner().invoke(cli.app, ["secrets", "rotate"])
    assert result.exit_code == 1
    assert "CHATBOTS_SECRET_KEY must be set" in result.stderr and result.stdout == ""


# --- end to end ----------------------------------------------------------------------------------


def service_settings(url: str, telegram: FakeTelegram, key: str, fallbacks: tuple[str, ...] = ()) -> Settings:
    return Settings(
        database_url=url, secret_key=key, secret_key_fallbacks=fallbacks, worker_in_process=False,
        telegram_api_base=telegram.url, delivery_backoff_seconds=0.0, delivery_poll_seconds=0.05,
        auth_cache_seconds=0, llm_timeout_seconds=5, llm_total_timeout_seconds=8, llm_max_retries=0,
        _env_file=None,
    )  # fmt: skip


@dataclass
class Deployment:
    """One database with a chatbot, its provider, a Telegram channel and a widget."""

    url: str
    telegram: FakeTelegram
    fake_llm: Any
    world: World
    widget: Widget
    model: str  # the chatbot's model name: picks this test's requests out of the fake LLM's

    def settings(self, key: str, fallbacks: tuple[str, ...] = ()) -> Settings:
        return service_settings(self.url, self.telegram, key, fallbacks)

    def rotate(self, tmp_path: Path, key: str, fallbacks: str = "") -> subprocess.CompletedProcess[str]:
        """``chatbots secrets rotate --json`` as an operator runs it: the installed command, in a
        process of its own, configured by its environment only."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATBOTS_")}
        env |= {"CHATBOTS_DATABASE_URL": self.url, "CHATBOTS_SECRET_KEY": key,
                "CHATBOTS_SECRET_KEY_FALLBACKS": fallbacks}  # fmt: skip
        command = str(Path(sys.executable).with_name("chatbots"))
        return subprocess.run([command, "secrets", "rotate", "--json"], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)  # fmt: skip


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield app, client


@pytest.fixture
async def deployment(tmp_path, fake_llm) -> AsyncIterator[Deployment]:  # type: ignore[no-untyped-def]
    """Everything written under key A; the provider's key as the release before HKDF wrote it."""
    telegram = await FakeTelegram().start()
    model = f"fake-model#rotation-{uuid.uuid4().hex[:8]}"
    try:
        async with own_database(tmp_path) as url:
            settings = service_settings(url, telegram, KEY_A)
            async with serving(settings) as (app, _):
                world = await make_world(app.state.sessionmaker, settings, api_base=fake_llm.base_url, model=model)
                async with app.state.sessionmaker() as s:
                    provider = await s.get(LlmProvider, world.provider.id)
                    provider.config = {"api_base": fake_llm.base_url,
                                       "api_key": pre_hkdf_encrypt(PROVIDER_KEY, KEY_A)}  # fmt: skip
                    await create_channel(s, settings, world.chatbot.public_id, "telegram",
                                         config={"bot_token": BOT_TOKEN})  # fmt: skip
                    await s.commit()
                widget = await add_widget(app.state.sessionmaker, settings, world)
            yield Deployment(url, telegram, fake_llm, world, widget, model)
    finally:
        await telegram.stop()


async def assert_everything_works(deployment: Deployment, settings: Settings) -> None:
    """A turn through the provider's key, a delivery through the channel's bot token, and a turn
    with the widget's embed key, on a service started with ``settings``."""
    world, llm = deployment.world, deployment.fake_llm
    async with serving(settings) as (app, client):
        r = await client.post(world.url, json={"message": "hello"}, headers=world.headers)
        assert r.status_code == 200, r.text
        # The model name is this test's alone; the fake keeps only its last 1000 requests.
        ours = [q for q in llm.requests(full=True) if q["body"]["model"] == deployment.model]
        assert ours[-1]["headers"]["authorization"] == f"Bearer {PROVIDER_KEY}"

        sent_before = len(deployment.telegram.requests)
        body = {"identifier": "4242", "platform": "telegram", "experiment": str(world.chatbot.public_id),
                "message_text": "Your appointment is tomorrow."}  # fmt: skip
        r = await client.post("/api/trigger_bot", json=body, headers=world.headers)
        assert r.status_code == 200, r.text
        status = await delivered(app, client, world, r.json()["delivery_id"])
        assert status["status"] == "sent", status
        [sent] = deployment.telegram.requests[sent_before:]
        assert sent["path"] == f"/bot{BOT_TOKEN}/sendMessage"

        headers = {"X-Embed-Key": deployment.widget.key, "Origin": PAGE}
        r = await client.post(world.url, json={"message": "from the page"}, headers=headers)
        assert r.status_code == 200, r.text


async def delivered(app: Any, client: httpx.AsyncClient, world: World, delivery_id: str) -> dict[str, Any]:
    worker = DeliveryWorker(app.state.runtime)
    task = asyncio.create_task(worker.run())
    try:
        deadline = time.monotonic() + 10
        while True:
            r = await client.get(f"/api/deliveries/{delivery_id}", headers=world.headers)
            status = r.json()
            if status["status"] in ("sent", "failed", "skipped") or time.monotonic() > deadline:
                return status
            await asyncio.sleep(0.02)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)


async def stored_configs(deployment: Deployment) -> list[dict[str, Any]]:
    """Every provider's and channel's config as stored (still encrypted)."""
    engine = make_engine(deployment.url, pool_size=1, max_overflow=0)
    try:
        async with make_sessionmaker(engine)() as s:
            providers = list(await s.scalars(select(LlmProvider.config).order_by(LlmProvider.id)))
            channels = list(await s.scalars(select(Channel.config).order_by(Channel.id)))
    finally:
        await engine.dispose()
    return providers + channels


async def test_a_key_change_with_a_fallback_then_a_rotation_keeps_every_secret_working(
    deployment: Deployment, tmp_path: Path
) -> None:
    written_under_a = await stored_configs(deployment)
    with pytest.raises(ValueError):  # B alone cannot read what A wrote: hence the fallback
        decrypt_config(written_under_a[0], KEY_B)

    await assert_everything_works(deployment, deployment.settings(KEY_B, fallbacks=(KEY_A,)))
    before_rotation = await stored_configs(deployment)

    done = deployment.rotate(tmp_path, KEY_B, fallbacks=KEY_A)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report == {
        "tables": {
            "llm_provider": {"rows": 1, "current": 0, "rotated": 1, "unreadable": 0},
            # The bot and widget tokens; the team's API channel (made by the first turn) has none.
            "channel": {"rows": 3, "current": 0, "rotated": 2, "unreadable": 0},
        },
        "unreadable": [],
    }
    rotated = await stored_configs(deployment)
    assert rotated != before_rotation
    assert [decrypt_config(c, KEY_B) for c in rotated] == [decrypt_config(c, (KEY_B, KEY_A)) for c in before_rotation]

    again = deployment.rotate(tmp_path, KEY_B)  # idempotent: nothing left to rewrite
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["tables"] == {
        "llm_provider": {"rows": 1, "current": 1, "rotated": 0, "unreadable": 0},
        "channel": {"rows": 3, "current": 2, "rotated": 0, "unreadable": 0},
    }
    assert await stored_configs(deployment) == rotated

    await assert_everything_works(deployment, deployment.settings(KEY_B))  # the fallback removed


async def test_a_value_no_key_opens_is_reported_left_as_it_is_and_fails_the_rotation(
    deployment: Deployment, tmp_path: Path
) -> None:
    lost_config = encrypt_config({"api_base": "http://127.0.0.1:9/v1", "api_key": "sk-lost"}, KEY_LOST)
    async with serving(deployment.settings(KEY_A)) as (app, _):
        async with app.state.sessionmaker() as s:
            lost = LlmProvider(team_id=deployment.world.team.id, type="openai_compatible", name="lost",
                               config=lost_config)  # fmt: skip
            s.add(lost)
            await s.commit()
            lost_id = lost.id

    done = deployment.rotate(tmp_path, KEY_B, fallbacks=KEY_A)
    assert done.returncode == 1
    assert "1 stored value(s) could not be decrypted" in done.stderr and "Traceback" not in done.stderr
    report = json.loads(done.stdout)
    assert report["unreadable"] == [{"table": "llm_provider", "id": lost_id, "field": "api_key"}]
    assert report["tables"]["llm_provider"] == {"rows": 2, "current": 0, "rotated": 1, "unreadable": 1}
    assert report["tables"]["channel"]["rotated"] == 2  # the rest was rotated all the same

    assert (await stored_configs(deployment))[1] == lost_config  # providers first, by id
    await assert_everything_works(deployment, deployment.settings(KEY_B))


async def test_rotation_walks_every_row_across_batches(tmp_path: Path) -> None:
    """Batches of 2 over 5 providers (the service itself, as the command calls it): every row
    read once, every value rewritten, a value that is not encrypted left alone."""
    async with own_database(tmp_path) as url:
        engine = make_engine(url, pool_size=1, max_overflow=0)
        try:
            async with make_sessionmaker(engine)() as s:
                team = Team(slug=f"rotation-{uuid.uuid4().hex[:8]}", name="Rotation")
                s.add(team)
                await s.flush()
                for n in range(5):
                    s.add(LlmProvider(team_id=team.id, type="openai", name=f"p{n}",
                                      config={"api_key": encrypt(f"sk-{n}", KEY_A), "api_base": "x"}))  # fmt: skip
                await s.commit()
                report = await rotate_secrets(s, (KEY_B, KEY_A), batch_size=2)
                configs = list(await s.scalars(select(LlmProvider.config).order_by(LlmProvider.id)))
        finally:
            await engine.dispose()
    counts = report.tables["llm_provider"]
    assert (counts.rows, counts.rotated, counts.current, counts.unreadable) == (5, 5, 0, 0)
    assert [decrypt_config(c, KEY_B) for c in configs] == [{"api_key": f"sk-{n}", "api_base": "x"} for n in range(5)]
