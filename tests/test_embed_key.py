"""Embed keys (SPEC §4.6, §3.2 steps 1, 4, 5): a widget's key chats with its chatbot only, from
the pages its channel allows, as an anonymous participant per conversation. Real requests
through the ASGI app on the suite's database (SQLite, or PostgreSQL)."""

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from app.auth.resolvers.embed_key import ORIGIN_NOT_ALLOWED
from app.models import Channel, Chatbot, ChatMessage, ChatSession, Participant, Platform
from tests.assertions import assert_error, nothing_written
from tests.factories import Widget, add_widget, make_world, World
from tests.test_auth_cache import cached_app  # noqa: F401  (a fixture: an app that remembers lookups)

PAGE = "https://app.example.com"
INVALID_TOKEN = {"detail": "Invalid token."}
FORBIDDEN = {"detail": "You do not have permission to perform this action."}
ORIGIN_REFUSED = {"detail": ORIGIN_NOT_ALLOWED}


@pytest.fixture
async def widget(db, settings, world) -> Widget:  # type: ignore[no-untyped-def]
    return await add_widget(db, settings, world, "app.example.com, *.example.org, localhost:3000")


def page_headers(widget: Widget, origin: str | None = PAGE, **more: str) -> dict[str, str]:
    headers = {"X-Embed-Key": widget.key, **more}
    if origin is not None:
        headers["Origin"] = origin
    return headers


async def chat(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], message: str | None = None, **body: Any
) -> httpx.Response:
    return await client.post(url, json={"message": message or f"hi {uuid.uuid4()}", **body}, headers=headers)


async def session_of(db, external_id: str) -> ChatSession:  # type: ignore[no-untyped-def]
    async with db() as s:
        return await s.scalar(select(ChatSession).where(ChatSession.external_id == external_id))


async def participant_of(db, session: ChatSession) -> Participant:  # type: ignore[no-untyped-def]
    async with db() as s:
        return await s.get(Participant, session.participant_id)


# --- the turn ------------------------------------------------------------------------------------


@pytest.mark.parametrize("versioned", [False, True])
async def test_a_widget_turn_from_an_allowed_origin_answers_as_a_new_anonymous_participant(
    client, db, world, widget, versioned
):
    url = world.version_url(1) if versioned else world.url
    r = await chat(client, url, page_headers(widget), "hello bot")
    assert r.status_code == 200, r.text
    assert r.json()["response"] == "echo: hello bot"
    assert r.headers["access-control-allow-origin"] == PAGE
    assert "Origin" in r.headers["vary"]

    session = await session_of(db, r.json()["session_id"])
    assert (session.channel_id, session.platform) == (widget.channel_id, Platform.embedded_widget)
    participant = await participant_of(db, session)
    assert participant.platform == Platform.embedded_widget
    assert participant.identifier.startswith("anon:") and participant.user_id is None
    uuid.UUID(participant.identifier.removeprefix("anon:"))


async def test_two_visitors_get_two_sessions_and_never_see_each_others_messages(
    client, db, world, widget, fake_llm
):
    first = await chat(client, world.url, page_headers(widget), "secret of visitor one")
    second = await chat(client, world.url, page_headers(widget), "question of visitor two")
    assert first.status_code == second.status_code == 200
    one, two = await session_of(db, first.json()["session_id"]), await session_of(db, second.json()["session_id"])
    assert one.id != two.id and one.participant_id != two.participant_id
    [sent] = [q for q in fake_llm.requests() if q["messages"][-1]["content"] == "question of visitor two"]
    assert not any("secret of visitor one" in m["content"] for m in sent["messages"])


async def test_a_visitor_continues_its_conversation_by_naming_its_session(client, db, world, widget, fake_llm):
    first = await chat(client, world.url, page_headers(widget), "my name is Ada")
    session_id = first.json()["session_id"]
    async with db() as s:
        participants_before = len((await s.scalars(select(Participant.id).where(Participant.team_id == world.team.id))).all())

    again = await chat(client, world.url, page_headers(widget), "what is my name?", session=session_id)
    assert again.status_code == 200, again.text
    assert again.json()["session_id"] == session_id
    [sent] = [q for q in fake_llm.requests() if q["messages"][-1]["content"] == "what is my name?"]
    assert any(m["content"] == "my name is Ada" for m in sent["messages"])
    async with db() as s:
        contents = (await s.scalars(select(ChatMessage.content).join(ChatSession).where(
            ChatSession.external_id == session_id).order_by(ChatMessage.id))).all()  # fmt: skip
        participants = (await s.scalars(select(Participant.id).where(Participant.team_id == world.team.id))).all()
    assert contents == ["my name is Ada", "echo: my name is Ada", "what is my name?", "echo: what is my name?"]
    assert len(participants) == participants_before  # no new participant for a continued session


async def test_a_session_that_is_not_this_widgets_is_not_found(client, db, settings, world, widget, fake_llm):
    api_session = (await chat(client, world.url, world.headers)).json()["session_id"]
    other_world = await make_world(db, settings, api_base=fake_llm.base_url)
    other_widget = await add_widget(db, settings, other_world, "app.example.com")
    foreign = (await chat(client, other_world.url, page_headers(other_widget))).json()["session_id"]
    for session in (api_session, foreign, str(uuid.uuid4()), "x" * 500):
        async with nothing_written(db, world, other_world):
            r = await chat(client, world.url, page_headers(widget), session=session)
        assert_error(r, 404, {"detail": "Session not found."})
        assert r.headers["access-control-allow-origin"] == PAGE  # the widget may read why


async def test_a_disabled_widget_answers_its_disabled_message_and_stores_nothing(client, db, world, widget):
    async with db() as s:
        await s.execute(update(Channel).where(Channel.id == widget.channel_id).values(
            enabled=False, disabled_message="The chat is closed today."))  # fmt: skip
        await s.commit()
    r = await chat(client, world.url, page_headers(widget))
    assert r.status_code == 200 and r.json()["response"] == "The chat is closed today."
    async with db() as s:
        stored = (await s.scalars(select(ChatMessage.id).join(ChatSession).where(
            ChatSession.channel_id == widget.channel_id))).all()  # fmt: skip
    assert stored == []


async def test_a_chatbot_with_an_allow_list_refuses_anonymous_visitors(client, db, settings, fake_llm):
    world = await make_world(db, settings, api_base=fake_llm.base_url, participant_allowlist=["+15550001"])
    widget = await add_widget(db, settings, world, "app.example.com")
    r = await chat(client, world.url, page_headers(widget))
    assert r.status_code == 200 and r.json()["response"] == "Sorry, you are not allowed to chat to this bot"


# --- where the key may be used ------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        pytest.param("https://evil.example", id="foreign"),
        pytest.param("https://app.example.com.evil.example", id="look-alike-suffix"),
        pytest.param("https://evilapp.example.com", id="look-alike-prefix"),
        pytest.param("https://app.example.com:8443", id="other-port"),
        pytest.param("http://localhost:3001", id="other-port-of-an-allowed-port"),
        pytest.param("ftp://app.example.com", id="other-scheme"),
        pytest.param("null", id="null"),
        pytest.param("https://app.example.com@evil.example", id="user-info"),
        pytest.param("https://evil.example\\.app.example.com", id="backslash"),
        pytest.param("https://example.org", id="wildcard-parent"),
    ],
)
async def test_an_origin_the_channel_does_not_allow_is_403(client, db, world, widget, origin):
    async with nothing_written(db, world):
        r = await chat(client, world.url, page_headers(widget, origin))
    assert_error(r, 403, ORIGIN_REFUSED)
    assert "access-control-allow-origin" not in r.headers


async def test_no_origin_and_no_referer_is_403(client, db, world, widget):
    async with nothing_written(db, world):
        r = await chat(client, world.url, page_headers(widget, None))
    assert_error(r, 403, ORIGIN_REFUSED)


@pytest.mark.parametrize(
    ("referer", "status"),
    [
        ("https://app.example.com/shop/cart?item=3#top", 200),
        ("https://shop.example.org/", 200),
        ("https://app.example.com.evil.example/page", 403),
        ("https://app.example.com@evil.example/page", 403),
    ],
)
async def test_without_origin_the_referer_decides(client, world, widget, referer, status):
    r = await chat(client, world.url, page_headers(widget, None, Referer=referer))
    assert r.status_code == status, r.text
    assert "access-control-allow-origin" not in r.headers  # no Origin: not a CORS request


async def test_an_origin_is_not_replaced_by_an_allowed_referer(client, world, widget):
    r = await chat(client, world.url, page_headers(widget, "null", Referer=f"{PAGE}/page"))
    assert_error(r, 403, ORIGIN_REFUSED)


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        ("https://shop.example.com", 200),
        ("https://a.b.example.com", 200),
        ("http://shop.example.com", 200),  # no scheme in the entry: http and https
        ("https://example.com", 403),  # *.example.com is for sub-domains only
        ("https://shopexample.com", 403),
    ],
)
async def test_a_sub_domain_wildcard_admits_sub_domains_only(client, db, settings, world, origin, status):
    widget = await add_widget(db, settings, world, "*.example.com")
    r = await chat(client, world.url, page_headers(widget, origin))
    assert r.status_code == status, r.text


@pytest.mark.parametrize(
    ("origin", "status"),
    [("https://anything.test", 200), ("http://localhost:5173", 200), ("null", 403), ("file://", 403)],
)
async def test_a_star_admits_any_web_page(client, db, settings, world, origin, status):
    widget = await add_widget(db, settings, world, "*")
    r = await chat(client, world.url, page_headers(widget, origin))
    assert r.status_code == status, r.text


async def test_an_entry_with_a_scheme_admits_only_that_scheme(client, db, settings, world):
    widget = await add_widget(db, settings, world, "https://secure.example.net")
    assert (await chat(client, world.url, page_headers(widget, "https://secure.example.net"))).status_code == 200
    r = await chat(client, world.url, page_headers(widget, "http://secure.example.net"))
    assert_error(r, 403, ORIGIN_REFUSED)


# --- what the key may reach -----------------------------------------------------------------------


async def test_another_chatbot_is_403_even_of_the_same_team(client, db, world, widget):
    async with db() as s:
        other = Chatbot(team_id=world.team.id, name="Other", llm_provider_id=world.provider.id, llm_model="fake-model")
        s.add(other)
        await s.commit()
    for public_id in (other.public_id, uuid.uuid4()):
        async with nothing_written(db, world):
            r = await chat(client, f"/channels/api/{public_id}/incoming_message", page_headers(widget))
        assert_error(r, 403, FORBIDDEN)


async def test_trigger_bot_and_delivery_status_refuse_an_embed_key(client, db, world, widget):
    trigger_body = {"identifier": "anon:1", "platform": "embedded_widget",
                    "experiment": str(world.chatbot.public_id), "prompt_text": "Say hi"}  # fmt: skip
    async with nothing_written(db, world):
        r = await client.post("/api/trigger_bot", json=trigger_body, headers=page_headers(widget))
    assert_error(r, 403, FORBIDDEN)
    r = await client.get("/api/deliveries/1", headers=page_headers(widget))
    assert_error(r, 403, FORBIDDEN)


@pytest.mark.parametrize("key", ["unknown-" + "k" * 24, "", "k"])
async def test_an_unknown_embed_key_is_401(client, db, world, widget, key):
    async with nothing_written(db, world):
        r = await chat(client, world.url, {"X-Embed-Key": key, "Origin": PAGE})
    assert_error(r, 401, INVALID_TOKEN)
    assert "access-control-allow-origin" not in r.headers


async def test_the_key_of_a_deleted_channel_or_an_archived_chatbot_is_401(client, db, settings, world, fake_llm):
    deleted = await add_widget(db, settings, world)
    async with db() as s:
        await s.execute(update(Channel).where(Channel.id == deleted.channel_id).values(deleted=True))
        await s.commit()
    archived_world = await make_world(db, settings, api_base=fake_llm.base_url)
    archived = await add_widget(db, settings, archived_world)
    async with db() as s:
        await s.execute(update(Chatbot).where(Chatbot.id == archived_world.chatbot.id).values(is_archived=True))
        await s.commit()
    for w, widget in ((world, deleted), (archived_world, archived)):
        async with nothing_written(db, w):
            r = await chat(client, w.url, page_headers(widget))
        assert_error(r, 401, INVALID_TOKEN)


async def test_a_rotated_key_replaces_the_old_one(client, db, settings, world, widget):
    from app.services.admin import rotate_widget_token

    async with db() as s:
        _, new_key = await rotate_widget_token(s, settings, widget.channel_id)
        await s.commit()
    assert_error(await chat(client, world.url, page_headers(widget)), 401, INVALID_TOKEN)
    r = await chat(client, world.url, page_headers(Widget(widget.channel_id, new_key)))
    assert r.status_code == 200, r.text


async def test_a_given_widget_token_must_be_unguessable(db, settings, world):
    from app.errors import BadRequest
    from app.services.admin import create_channel

    async with db() as s:
        with pytest.raises(BadRequest, match="32 to 128 URL-safe"):
            await create_channel(s, settings, world.chatbot.public_id, "embedded_widget",
                                 config={"allowed_domains": "a.example", "widget_token": "short"})  # fmt: skip


# --- CORS -----------------------------------------------------------------------------------------


def preflight_headers(origin: str, method: str = "POST") -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "content-type,x-embed-key,idempotency-key"}  # fmt: skip


@pytest.mark.parametrize("path", ["incoming_message", "incoming_message/", "v1/incoming_message", "v0/incoming_message/"])
async def test_a_preflight_from_an_allowed_origin_is_answered(client, world, widget, path):
    r = await client.options(f"/channels/api/{world.chatbot.public_id}/{path}", headers=preflight_headers(PAGE))
    assert r.status_code == 204, r.text
    assert r.headers["access-control-allow-origin"] == PAGE
    assert r.headers["vary"] == "Origin"
    assert r.headers["access-control-allow-methods"] == "POST"
    allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {"x-embed-key", "content-type", "idempotency-key"} <= allowed
    assert "access-control-allow-credentials" not in r.headers
    assert r.headers["x-request-id"]


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "https://app.example.com.evil.example", "https://app.example.com:444", "null"]
)
async def test_a_preflight_from_another_origin_is_refused_without_cors_headers(client, world, widget, origin):
    r = await client.options(world.url, headers=preflight_headers(origin))
    assert_error(r, 403, {"detail": "This origin may not call this endpoint."})
    assert "access-control-allow-origin" not in r.headers


async def test_a_preflight_for_a_chatbot_without_a_widget_or_another_method_is_refused(client, db, world, widget):
    async with db() as s:
        other = Chatbot(team_id=world.team.id, name="No widget", llm_provider_id=world.provider.id, llm_model="m")
        s.add(other)
        await s.commit()
    for url, method in (
        (f"/channels/api/{other.public_id}/incoming_message", "POST"),
        ("/channels/api/not-a-uuid/incoming_message", "POST"),
        (world.url, "DELETE"),
    ):
        r = await client.options(url, headers=preflight_headers(PAGE, method))
        assert_error(r, 403)
        assert "access-control-allow-origin" not in r.headers


async def test_a_preflight_of_a_deleted_widget_is_refused(client, db, world, widget):
    async with db() as s:
        await s.execute(update(Channel).where(Channel.id == widget.channel_id).values(deleted=True))
        await s.commit()
    r = await client.options(world.url, headers=preflight_headers(PAGE))
    assert_error(r, 403)


async def test_cors_stays_closed_for_other_credentials_and_other_routes(client, world, widget):
    # An API key from a web page: no CORS (the key must not live in a page).
    r = await chat(client, world.url, {**world.headers, "Origin": PAGE})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    # Other routes: no preflight answer, no CORS header.
    r = await client.options("/api/trigger_bot", headers=preflight_headers(PAGE))
    assert r.status_code == 405 and "access-control-allow-origin" not in r.headers
    r = await client.get("/healthz", headers={"Origin": PAGE})
    assert r.status_code == 200
    assert "access-control-allow-origin" not in r.headers


async def test_reset_gives_the_same_visitor_a_new_session(client, db, world, widget):
    first = (await chat(client, world.url, page_headers(widget))).json()["session_id"]
    r = await chat(client, world.url, page_headers(widget), "/reset", session=first)
    assert r.status_code == 200 and r.json()["response"] == "Conversation reset"
    old, new = await session_of(db, first), await session_of(db, r.json()["session_id"])
    assert new.id != old.id and old.status == "pending-review"
    assert (new.participant_id, new.channel_id) == (old.participant_id, widget.channel_id)


async def test_an_idempotent_retry_of_a_widget_message_answers_once(client, db, world, widget):
    headers = page_headers(widget, **{"Idempotency-Key": str(uuid.uuid4())})
    message = f"only once {uuid.uuid4()}"
    first = await chat(client, world.url, headers, message)
    again = await chat(client, world.url, headers, message)
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    assert again.headers["access-control-allow-origin"] == PAGE
    async with db() as s:
        stored = (await s.scalars(select(ChatMessage.content).where(ChatMessage.content == message))).all()
    assert stored == [message]


# --- the credential cache (app/auth/cache.py) --------------------------------------------------


async def test_a_remembered_embed_key_still_has_its_origin_checked_every_time(
    cached_app, db, world, widget, monkeypatch
):
    from app.services.admin import rotate_widget_token

    store, lookups = cached_app.state.runtime.store, []
    real = store.statements

    def counted(**options: Any) -> Any:  # the store's real connection, counted
        lookups.append(options)
        return real(**options)

    monkeypatch.setattr(store, "statements", counted)
    transport = httpx.ASGITransport(app=cached_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for _ in range(2):
            r = await chat(client, world.url, page_headers(widget))
            assert r.status_code == 200, r.text
        assert len(lookups) == 1  # the second request's key came from memory
        assert_error(await chat(client, world.url, page_headers(widget, "https://evil.example")), 403, ORIGIN_REFUSED)
        # Rotated by another process (the CLI): the old key serves within the bound
        # (CHATBOTS_AUTH_CACHE_SECONDS), and is refused once forgotten.
        async with db() as s:
            _, new_key = await rotate_widget_token(s, cached_app.state.settings, widget.channel_id)
            await s.commit()
        assert (await chat(client, world.url, page_headers(widget))).status_code == 200
        cached_app.state.runtime.credentials.clear()
        assert_error(await chat(client, world.url, page_headers(widget)), 401, INVALID_TOKEN)
        # A channel deleted meanwhile: its remembered key authenticates, the turn refuses it.
        assert (await chat(client, world.url, page_headers(Widget(widget.channel_id, new_key)))).status_code == 200
        async with db() as s:
            await s.execute(update(Channel).where(Channel.id == widget.channel_id).values(deleted=True))
            await s.commit()
        r = await chat(client, world.url, page_headers(Widget(widget.channel_id, new_key)))
        assert_error(r, 403, FORBIDDEN)
