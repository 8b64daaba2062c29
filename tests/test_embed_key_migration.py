"""Migration 0006 fills the embed key's hash of the widget channels made before it, from their
encrypted config, with the app's secret key (``app.migrate`` hands the settings over); a token
it cannot read stops the migration with a message rather than leaving a widget that refuses
every visitor. On a fresh database of the suite's backend (SQLite file or PostgreSQL schema)."""

from typing import Any

import pytest
from sqlalchemy import insert, select

from app.auth.embed_keys import UnreadableWidgetToken, embed_key_hash, new_widget_token
from app.crypto import encrypt_config
from app.models import Channel, Chatbot, Team
from tests.test_hardening import alembic, fresh_database

CHANNEL = Channel.__table__


async def widgets_before_0006(engine: Any, secret_key: str) -> dict[str, tuple[int, str | None]]:
    """Channels as an older release made them (no hash column yet): name → (id, token)."""
    token, deleted_token = new_widget_token(), new_widget_token()

    def channel(name: str, platform: str, config: dict[str, Any], **values: Any) -> Any:
        return insert(CHANNEL).values(team_id=team_id, chatbot_id=chatbot_id, platform=platform, name=name,
                                      config=encrypt_config(config, secret_key), **values)  # fmt: skip

    async with engine.begin() as conn:
        team_id = (await conn.execute(insert(Team.__table__).values(slug="t", name="T").returning(Team.id))).scalar_one()
        chatbot_id = (await conn.execute(insert(Chatbot.__table__).values(
            team_id=team_id, name="Bot", llm_model="m").returning(Chatbot.id))).scalar_one()  # fmt: skip
        ids = {}
        for name, platform, config, values in [
            ("live", "embedded_widget", {"allowed_domains": ["a.example"], "widget_token": token}, {}),
            ("deleted", "embedded_widget", {"widget_token": deleted_token}, {"deleted": True}),
            ("tokenless", "web", {}, {}),
        ]:
            ids[name] = (await conn.execute(channel(name, platform, config, **values).returning(CHANNEL.c.id))).scalar_one()
    return {"live": (ids["live"], token), "deleted": (ids["deleted"], None), "tokenless": (ids["tokenless"], None)}


async def test_migration_0006_hashes_the_embed_keys_of_existing_widgets(settings, tmp_path):
    async with fresh_database(settings, tmp_path) as engine:
        await alembic(engine, "upgrade", "0005")
        widgets = await widgets_before_0006(engine, settings.secret_key)
        await alembic(engine, "upgrade", "head", settings)
        async with engine.connect() as conn:
            hashes = dict((await conn.execute(select(CHANNEL.c.id, CHANNEL.c.embed_key_hash))).all())
    for channel_id, token in widgets.values():
        assert hashes[channel_id] == (embed_key_hash(token) if token else None)


async def test_migration_0006_reads_tokens_with_the_fallback_keys(settings, tmp_path):
    """An upgrade made in the middle of a key change (README "Key rotation"): the tokens are still
    under the old key, now a fallback."""
    changed = settings.model_copy(update={"secret_key": "the-new-key",
                                          "secret_key_fallbacks": (settings.secret_key,)})  # fmt: skip
    async with fresh_database(settings, tmp_path) as engine:
        await alembic(engine, "upgrade", "0005")
        widgets = await widgets_before_0006(engine, settings.secret_key)
        await alembic(engine, "upgrade", "head", changed)
        async with engine.connect() as conn:
            stored = (await conn.execute(select(CHANNEL.c.embed_key_hash).where(
                CHANNEL.c.id == widgets["live"][0]))).scalar_one()  # fmt: skip
    assert stored == embed_key_hash(widgets["live"][1])


async def test_migration_0006_stops_when_a_widgets_token_cannot_be_read(settings, tmp_path):
    wrong_key = settings.model_copy(update={"secret_key": "not-the-key-it-was-encrypted-with"})
    async with fresh_database(settings, tmp_path) as engine:
        await alembic(engine, "upgrade", "0005")
        widgets = await widgets_before_0006(engine, settings.secret_key)
        with pytest.raises(UnreadableWidgetToken, match=f"Channel {widgets['live'][0]}: cannot decrypt"):
            await alembic(engine, "upgrade", "head", wrong_key)


async def test_without_a_secret_key_a_widget_waiting_for_its_hash_stops_the_fill(settings, tmp_path):
    """PostgreSQL without CHATBOTS_SECRET_KEY: the migration says what to set. (On SQLite the
    embedded default's key stands in, and a config encrypted with another key is unreadable.)"""
    from app.auth.embed_keys import fill_embed_key_hashes

    async with fresh_database(settings, tmp_path) as engine:
        await alembic(engine, "upgrade", "head", settings)
        widgets = await widgets_before_0006(engine, settings.secret_key)  # no hash: as before 0006
        async with engine.begin() as conn:
            with pytest.raises(UnreadableWidgetToken, match="set CHATBOTS_SECRET_KEY"):
                await conn.run_sync(fill_embed_key_hashes, None)
        async with engine.begin() as conn:
            assert await conn.run_sync(fill_embed_key_hashes, settings.secret_key) == 1
            assert await conn.run_sync(fill_embed_key_hashes, settings.secret_key) == 0  # idempotent
            stored = (await conn.execute(select(CHANNEL.c.embed_key_hash).where(
                CHANNEL.c.id == widgets["live"][0]))).scalar_one()  # fmt: skip
    assert stored == embed_key_hash(widgets["live"][1])
