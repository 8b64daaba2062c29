"""The OAuth flow as a test drives it: clients registered through the admin service, a browser
logged in with a real server-side session (``start_session``; the login page is not this
change's), the consent page approved through its form, the code exchanged at /o/token/."""

import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
from sqlalchemy import update
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from app.auth.csrf import CSRF_COOKIE, CSRF_FORM_FIELD
from app.auth.web_sessions import SESSION_COOKIE, start_session
from app.crypto import sha256_hex
from app.db import utcnow
from app.models import Channel, Platform
from app.services.admin_oauth import create_oauth_client
from tests.factories import World

CALLBACK = "https://client.example/callback"


@dataclass
class OAuthClientInfo:
    client_id: str
    secret: str | None

    def auth(self, form: dict[str, str]) -> dict[str, str]:
        """``form`` with the client's credentials as client_secret_post (or client_id alone)."""
        extra = {"client_id": self.client_id}
        if self.secret:
            extra["client_secret"] = self.secret
        return form | extra


async def register(db: Any, world: World, **options: Any) -> OAuthClientInfo:
    options.setdefault("redirect_uris", None if options.get("client_credentials") else [CALLBACK])
    async with db() as s:
        client, secret = await create_oauth_client(s, world.team.slug, "Test app", **options)
        await s.commit()
    return OAuthClientInfo(client.client_id, secret)


@dataclass
class Pkce:
    verifier: str = field(default_factory=lambda: secrets.token_urlsafe(48))

    @property
    def challenge(self) -> str:
        return create_s256_code_challenge(self.verifier)


def browser(app: Any, base_url: str = "http://test") -> httpx.AsyncClient:
    """A cookie jar of its own: what one test's browser holds never reaches another test."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)


async def log_in(app: Any, http: httpx.AsyncClient, world: World, user_id: int | None = None) -> None:
    raw = await start_session(app.state.runtime.store, user_id or world.user.id, world.team.id, utcnow(), timedelta(hours=1))
    http.cookies.set(SESSION_COOKIE, raw)
    http.cookies.set(CSRF_COOKIE, "csrf-" + secrets.token_urlsafe(16))


def authorize_url(client: OAuthClientInfo, pkce: Pkce | None, **overrides: str | None) -> str:
    params: dict[str, str | None] = {
        "response_type": "code", "client_id": client.client_id, "redirect_uri": CALLBACK,
        "scope": "chatbots:interact", "state": "st-" + uuid.uuid4().hex,
    }  # fmt: skip
    if pkce is not None:
        params |= {"code_challenge": pkce.challenge, "code_challenge_method": "S256"}
    params |= overrides
    return "/o/authorize/?" + urlencode({k: v for k, v in params.items() if v is not None})


async def decide(http: httpx.AsyncClient, url: str, decision: str = "approve", **fields: str) -> httpx.Response:
    form = {CSRF_FORM_FIELD: http.cookies[CSRF_COOKIE], "decision": decision} | fields
    return await http.post(url, data=form)


def redirect_params(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == CALLBACK
    return {k: v[0] for k, v in parse_qs(location.query).items()}


def offered_team(html: str) -> str:
    """The team the consent form submits by default (the fixed one, or the first choice)."""
    found = re.search(r'name="team" value="(\d+)"|<option value="(\d+)"', html)
    assert found is not None, html
    return found.group(1) or found.group(2)


async def get_code(http: httpx.AsyncClient, client: OAuthClientInfo, pkce: Pkce, **overrides: str | None) -> str:
    url = authorize_url(client, pkce, **overrides)
    page = await http.get(url)
    assert page.status_code == 200, page.text
    params = redirect_params(await decide(http, url, team=offered_team(page.text)))
    assert params["state"] == parse_qs(urlsplit(url).query)["state"][0]
    return params["code"]


async def exchange(
    http: httpx.AsyncClient, client: OAuthClientInfo, code: str, verifier: str | None, redirect_uri: str = CALLBACK
) -> httpx.Response:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    if verifier is not None:
        form["code_verifier"] = verifier
    return await http.post("/o/token/", data=client.auth(form))


async def code_for(
    app: Any, db: Any, world: World, scope: str | None = "chatbots:interact", **client_options: Any
) -> tuple[OAuthClientInfo, Pkce, str]:
    """A new client, its PKCE pair and a code the world's admin approved in a browser."""
    client = await register(db, world, **client_options)
    pkce = Pkce()
    async with browser(app) as http:
        await log_in(app, http, world)
        code = await get_code(http, client, pkce, scope=scope)
    return client, pkce, code


async def user_tokens(
    app: Any, db: Any, world: World, scope: str | None = "chatbots:interact", **client_options: Any
) -> tuple[OAuthClientInfo, dict[str, Any]]:
    """A client and the token response of a complete code flow for the world's admin."""
    client, pkce, code = await code_for(app, db, world, scope, **client_options)
    async with browser(app) as http:
        r = await exchange(http, client, code, pkce.verifier)
    assert r.status_code == 200, r.text
    return client, r.json()


async def set_token_row(db: Any, column: Any, secret: str, **values: Any) -> None:
    """Change the token row whose ``column`` (a hash column) holds ``secret``'s hash."""
    async with db() as s:
        await s.execute(update(column.class_).where(column == sha256_hex(secret)).values(**values))
        await s.commit()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def trigger_body(world: World) -> dict[str, Any]:
    return {"identifier": "someone@example.com", "platform": "api", "experiment": str(world.chatbot.public_id),
            "message_text": "Hello from a trigger"}  # fmt: skip


async def add_api_channel(db: Any, world: World, chatbot_id: int | None = None) -> None:
    """The chatbot's ``api`` channel, which trigger_bot on ``api`` needs (SPEC §3.3 step 4)."""
    async with db() as s:
        s.add(Channel(team_id=world.team.id, chatbot_id=chatbot_id or world.chatbot.id, platform=Platform.api,
                      name="api", config={"callback_url": "https://hooks.example/cb"}))  # fmt: skip
        await s.commit()
