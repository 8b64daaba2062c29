"""The authorization code flow with PKCE (SPEC §4.4), end to end through the ASGI app on the real
database: consent page, code, token, and the token used on the three endpoints."""

import uuid

from sqlalchemy import select

from app.crypto import sha256_hex
from app.models import OAuthToken
from app.security_headers import PAGE_CSP
from tests.oauth_helpers import (
    add_api_channel,
    CALLBACK, Pkce, authorize_url, bearer, browser, code_for, decide, exchange, log_in, redirect_params, register,
    trigger_body, user_tokens,
)  # fmt: skip


async def test_full_code_flow_with_pkce_reaches_incoming_message_and_trigger_bot(app, client, db, world):
    await add_api_channel(db, world)
    oauth_client, tokens = await user_tokens(app, db, world, public=True)
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 3600
    assert tokens["scope"] == "chatbots:interact"
    assert tokens["access_token"].startswith("cbat_") and tokens["refresh_token"].startswith("cbrt_")

    r = await client.post(world.url, json={"message": "hi there"}, headers=bearer(tokens["access_token"]))
    assert r.status_code == 200, r.text
    assert r.json()["response"].startswith("echo: hi there")
    r = await client.post("/api/trigger_bot", json=trigger_body(world), headers=bearer(tokens["access_token"]))
    assert r.status_code == 200, r.text

    async with db() as s:
        row = await s.scalar(select(OAuthToken).where(OAuthToken.access_token_hash == sha256_hex(tokens["access_token"])))
    assert row is not None and row.user_id == world.user.id and row.team_id == world.team.id
    assert tokens["access_token"] not in (row.access_token_hash, row.refresh_token_hash)  # stored hashed only


async def test_token_responses_are_never_cached(app, client, db, world):
    oauth_client, pkce, code = await code_for(app, db, world, public=True)
    ok = await exchange(client, oauth_client, code, pkce.verifier)
    refused = await exchange(client, oauth_client, code, pkce.verifier)
    for r in (ok, refused):
        assert r.headers["cache-control"] == "no-store" and r.headers["pragma"] == "no-cache"
    assert ok.status_code == 200 and refused.status_code == 400


async def test_no_scope_requested_grants_the_clients_allowed_scopes(app, db, world):
    _, tokens = await user_tokens(app, db, world, scope=None, public=True, scopes=["chatbots:interact", "sessions:read"])
    assert tokens["scope"] == "chatbots:interact sessions:read"


async def test_consent_page_names_client_scopes_and_team_and_is_never_framed(app, db, world):
    oauth_client = await register(db, world, public=True)
    async with browser(app) as http:
        await log_in(app, http, world)
        r = await http.get(authorize_url(oauth_client, Pkce()))
    assert r.status_code == 200
    assert r.headers["content-security-policy"] == PAGE_CSP
    assert r.headers["cache-control"] == "no-store"
    html = r.text
    assert "Test app" in html and "chatbots:interact" in html
    assert "Converse with a chatbot and trigger bot messages" in html
    assert world.team.slug in html
    assert 'value="approve"' in html and 'value="deny"' in html and "<script" not in html


async def test_anonymous_authorize_redirects_to_login_and_back(app, db, world):
    oauth_client = await register(db, world, public=True)
    url = authorize_url(oauth_client, Pkce())
    async with browser(app) as http:
        r = await http.get(url)
    assert r.status_code == 302
    location = r.headers["location"]
    assert location.startswith("/accounts/login?next=")
    from urllib.parse import parse_qs, urlsplit

    assert parse_qs(urlsplit(location).query)["next"] == [url]


async def test_deny_redirects_with_access_denied_and_state(app, db, world):
    oauth_client = await register(db, world, public=True)
    url = authorize_url(oauth_client, Pkce(), state="keep-me")
    async with browser(app) as http:
        await log_in(app, http, world)
        params = redirect_params(await decide(http, url, "deny"))
    assert params["error"] == "access_denied" and params["state"] == "keep-me" and "code" not in params


async def test_consent_post_without_csrf_is_403_and_issues_no_code(app, db, world):
    oauth_client = await register(db, world, public=True)
    url = authorize_url(oauth_client, Pkce())
    async with browser(app) as http:
        await log_in(app, http, world)
        missing = await http.post(url, data={"decision": "approve"})
        wrong = await http.post(url, data={"decision": "approve", "csrfmiddlewaretoken": "forged"})
    assert missing.status_code == 403 and "CSRF Failed: CSRF token missing." in missing.text
    assert wrong.status_code == 403 and "CSRF Failed: CSRF token incorrect." in wrong.text
    assert "location" not in missing.headers and "location" not in wrong.headers


async def test_a_team_choice_is_only_among_the_users_teams(app, db, world, settings, fake_llm):
    from tests.factories import make_world

    other = await make_world(db, settings, api_base=fake_llm.base_url)
    async with db() as s:
        from app.models import OAuthClient

        s.add(OAuthClient(client_id="cbc_" + uuid.uuid4().hex, name="Any team app", redirect_uris=[CALLBACK],
                          grant_types=["authorization_code", "refresh_token"], scopes=["chatbots:interact"]))  # fmt: skip
        await s.commit()
        client_id = (await s.scalars(select(OAuthClient.client_id).where(OAuthClient.name == "Any team app")
                                     .order_by(OAuthClient.id.desc()))).first()  # fmt: skip
    from tests.oauth_helpers import OAuthClientInfo

    oauth_client = OAuthClientInfo(client_id, None)
    url = authorize_url(oauth_client, Pkce())
    async with browser(app) as http:
        await log_in(app, http, world)
        page = await http.get(url)
        refused = await decide(http, url, team=str(other.team.id))
    assert page.status_code == 200 and world.team.slug in page.text and other.team.slug not in page.text
    assert refused.status_code == 400 and "location" not in refused.headers


async def test_docs_authorize_button_runs_the_code_flow_with_pkce(client):
    html = (await client.get("/docs")).text
    assert '"usePkceWithAuthorizationCodeGrant": true' in html and "/docs/oauth2-redirect" in html
    r = await client.get("/docs/oauth2-redirect")
    assert r.status_code == 200 and "oauth2" in r.text.lower()
