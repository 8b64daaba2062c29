"""What an OAuth server reviewer probes (RFC 6749, RFC 7636, RFC 9700): PKCE S256 for every
client, single-use short-lived codes whose replay revokes what they issued, exact redirect URIs
(refused with a page, never a redirect), no implicit or password grant."""

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from app.crypto import sha256_hex
from app.db import utcnow
from app.models import OAuthAuthorizationCode
from app.security_headers import PAGE_CSP
from tests.assertions import assert_error
from tests.oauth_helpers import (
    CALLBACK, Pkce, authorize_url, bearer, browser, code_for, decide, exchange, get_code, log_in,
    redirect_params, register,
)  # fmt: skip

INVALID_TOKEN = {"detail": "Invalid token."}


@pytest.mark.parametrize("public", [True, False], ids=["public", "confidential"])
@pytest.mark.parametrize(
    "pkce_params",
    [{}, {"code_challenge_method": "plain"}, {"code_challenge_method": None}],
    ids=["missing", "plain", "no-method"],
)
async def test_authorize_refuses_without_s256_pkce_for_every_client(app, db, world, public, pkce_params):
    oauth_client = await register(db, world, public=public)
    pkce = Pkce()
    overrides = {"code_challenge": None} if not pkce_params else {"code_challenge": pkce.challenge} | pkce_params
    url = authorize_url(oauth_client, None, **overrides)
    async with browser(app) as http:
        await log_in(app, http, world)
        page = await http.get(url)
        decision = await decide(http, url)
    for r in (page, decision):
        params = redirect_params(r)  # the redirect URI is registered: the error goes to the client
        assert params["error"] == "invalid_request" and "code" not in params


async def test_wrong_or_missing_verifier_is_refused(app, db, world):
    oauth_client = await register(db, world, public=True)
    async with browser(app) as http:
        await log_in(app, http, world)
        wrong = await exchange(http, oauth_client, await get_code(http, oauth_client, Pkce()), Pkce().verifier)
        missing = await exchange(http, oauth_client, await get_code(http, oauth_client, Pkce()), None)
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"


async def test_a_replayed_code_is_refused_and_revokes_its_tokens(app, client, db, world):
    oauth_client, pkce, code = await code_for(app, db, world, public=True)
    first = await exchange(client, oauth_client, code, pkce.verifier)
    assert first.status_code == 200
    tokens = first.json()
    assert (await client.post(world.url, json={"message": "hi"}, headers=bearer(tokens["access_token"]))).status_code == 200
    replay = await exchange(client, oauth_client, code, pkce.verifier)
    refresh = await client.post("/o/token/", data=oauth_client.auth(
        {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}))  # fmt: skip
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    r = await client.post(world.url, json={"message": "hi"}, headers=bearer(tokens["access_token"]))
    assert_error(r, 401, INVALID_TOKEN)
    assert refresh.status_code == 400 and refresh.json()["error"] == "invalid_grant"


async def test_an_expired_code_is_refused(app, client, db, world):
    oauth_client, pkce, code = await code_for(app, db, world, public=True)
    async with db() as s:
        await s.execute(update(OAuthAuthorizationCode).where(OAuthAuthorizationCode.code_hash == sha256_hex(code))
                        .values(expires_at=utcnow() - timedelta(seconds=1)))  # fmt: skip
        await s.commit()
    r = await exchange(client, oauth_client, code, pkce.verifier)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


async def test_codes_live_sixty_seconds(app, db, world):
    _, _, code = await code_for(app, db, world, public=True)
    stored = await _code_row(db, code)
    assert stored.expires_at - stored.created_at == timedelta(seconds=60)
    assert stored.code_challenge_method == "S256" and code not in stored.code_hash


async def _code_row(db, code):  # type: ignore[no-untyped-def]
    async with db() as s:
        return await s.scalar(select(OAuthAuthorizationCode).where(OAuthAuthorizationCode.code_hash == sha256_hex(code)))


async def test_a_code_is_bound_to_its_client_and_redirect_uri(app, db, world):
    oauth_client = await register(db, world, public=True, redirect_uris=[CALLBACK, "https://client.example/other"])
    other_client = await register(db, world, public=True)
    async with browser(app) as http:
        await log_in(app, http, world)
        pkce = Pkce()
        stolen = await exchange(http, other_client, await get_code(http, oauth_client, pkce), pkce.verifier)
        pkce = Pkce()
        moved = await exchange(http, oauth_client, await get_code(http, oauth_client, pkce), pkce.verifier,
                               redirect_uri="https://client.example/other")  # fmt: skip
    assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"
    assert moved.status_code == 400 and moved.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    "redirect_uri",
    [CALLBACK + "/", CALLBACK + "?next=1", "https://evil.example/callback", "https://client.example/Callback",
     "http://client.example/callback"],
    ids=["extra-slash", "query", "other-host", "other-case", "http"],
)  # fmt: skip
async def test_a_redirect_uri_that_is_not_registered_exactly_gets_a_page_not_a_redirect(app, db, world, redirect_uri):
    oauth_client = await register(db, world, public=True)
    url = authorize_url(oauth_client, Pkce(), redirect_uri=redirect_uri)
    async with browser(app) as http:
        await log_in(app, http, world)
        page = await http.get(url)
        post = await decide(http, url, team=str(world.team.id))
    for r in (page, post):
        assert r.status_code == 400 and "location" not in r.headers
        assert r.headers["content-type"].startswith("text/html")
        assert r.headers["content-security-policy"] == PAGE_CSP


async def test_an_unknown_client_gets_a_page_not_a_redirect(app, db, world):
    from tests.oauth_helpers import OAuthClientInfo

    url = authorize_url(OAuthClientInfo("cbc_unknown", None), Pkce())
    async with browser(app) as http:
        await log_in(app, http, world)
        r = await http.get(url)
    assert r.status_code == 400 and "location" not in r.headers and "does not exist" in r.text


async def test_no_implicit_or_password_grant(app, client, db, world):
    oauth_client = await register(db, world, public=False)
    async with browser(app) as http:
        await log_in(app, http, world)
        implicit = await http.get(authorize_url(oauth_client, Pkce(), response_type="token"))
    password = await client.post("/o/token/", data=oauth_client.auth(
        {"grant_type": "password", "username": world.user.email, "password": "x"}))  # fmt: skip
    assert redirect_params(implicit)["error"] == "unsupported_response_type"
    assert password.status_code == 400 and password.json()["error"] == "unsupported_grant_type"


async def test_a_confidential_client_needs_its_secret_at_the_token_endpoint(app, client, db, world):
    oauth_client, pkce, code = await code_for(app, db, world, public=False)
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK, "code_verifier": pkce.verifier,
            "client_id": oauth_client.client_id}  # fmt: skip
    no_secret = await client.post("/o/token/", data=form)
    wrong = await client.post("/o/token/", data=form, auth=(oauth_client.client_id, "cbcs_wrong"))
    basic = await client.post("/o/token/", data=form, auth=(oauth_client.client_id, oauth_client.secret))
    assert no_secret.status_code in (400, 401) and no_secret.json()["error"] == "invalid_client"
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    assert basic.status_code == 200, basic.text


async def test_the_token_endpoint_takes_only_forms(client):
    r = await client.post("/o/token/", json={"grant_type": "client_credentials"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
