"""Tokens after the code flow (SPEC §4.4): rotating refresh tokens and reuse detection,
revocation (RFC 7009), introspection (RFC 7662), the metadata document (RFC 8414), and the
access token as a credential on the three endpoints."""

from datetime import timedelta

from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from sqlalchemy import delete, select, update

from app.crypto import sha256_hex
from app.db import utcnow
from app.models import Membership, OAuthToken, User
from tests.assertions import assert_error
from tests.factories import make_world
from tests.oauth_helpers import bearer, browser, register, set_token_row, trigger_body, user_tokens

INVALID_TOKEN = {"detail": "Invalid token."}
SECOND = timedelta(seconds=1)
FORBIDDEN = {"detail": "You do not have permission to perform this action."}


async def refresh(client, oauth_client, refresh_token, **extra):  # type: ignore[no-untyped-def]
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token} | extra
    return await client.post("/o/token/", data=oauth_client.auth(form))


async def chat(client, world, token):  # type: ignore[no-untyped-def]
    return await client.post(world.url, json={"message": "hi"}, headers=bearer(token))


async def token_row(db, access_token):  # type: ignore[no-untyped-def]
    async with db() as s:
        return await s.scalar(select(OAuthToken).where(OAuthToken.access_token_hash == sha256_hex(access_token)))


# --- refresh ------------------------------------------------------------------------------------


async def test_refresh_rotates_the_pair_within_one_family_for_public_and_confidential_clients(app, client, db, world):
    for public in (True, False):
        oauth_client, first = await user_tokens(app, db, world, public=public)
        r = await refresh(client, oauth_client, first["refresh_token"])
        assert r.status_code == 200, r.text
        second = r.json()
        assert second["refresh_token"] != first["refresh_token"] and second["access_token"] != first["access_token"]
        assert r.headers["cache-control"] == "no-store"
        assert (await token_row(db, first["access_token"])).family_id == (await token_row(db, second["access_token"])).family_id
        assert (await chat(client, world, second["access_token"])).status_code == 200
        assert (await refresh(client, oauth_client, second["refresh_token"])).status_code == 200


async def test_reusing_a_rotated_refresh_token_revokes_the_whole_family(app, client, db, world):
    oauth_client, first = await user_tokens(app, db, world, public=True)
    second = (await refresh(client, oauth_client, first["refresh_token"])).json()
    reuse = await refresh(client, oauth_client, first["refresh_token"])
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    assert_error(await chat(client, world, second["access_token"]), 401, INVALID_TOKEN)
    assert_error(await chat(client, world, first["access_token"]), 401, INVALID_TOKEN)
    assert (await refresh(client, oauth_client, second["refresh_token"])).status_code == 400


async def test_another_client_cannot_use_a_refresh_token_and_does_not_spend_it(app, client, db, world):
    oauth_client, tokens = await user_tokens(app, db, world, public=True)
    thief = await register(db, world, public=True)
    stolen = await refresh(client, thief, tokens["refresh_token"])
    assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"
    assert (await refresh(client, oauth_client, tokens["refresh_token"])).status_code == 200


async def test_refresh_may_narrow_but_not_widen_the_scope(app, client, db, world):
    oauth_client, tokens = await user_tokens(app, db, world, public=True)
    wider = await refresh(client, oauth_client, tokens["refresh_token"], scope="chatbots:interact sessions:write")
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"


async def test_an_expired_refresh_token_is_refused(app, client, db, world):
    oauth_client, tokens = await user_tokens(app, db, world, public=True)
    await set_token_row(db, OAuthToken.refresh_token_hash, tokens["refresh_token"], refresh_expires_at=utcnow() - SECOND)
    r = await refresh(client, oauth_client, tokens["refresh_token"])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


# --- revocation ---------------------------------------------------------------------------------


async def test_a_public_client_revokes_its_token_with_its_client_id_alone(app, client, db, world):
    oauth_client, tokens = await user_tokens(app, db, world, public=True)
    r = await client.post("/o/revoke_token/", data={"token": tokens["access_token"], "client_id": oauth_client.client_id})
    assert r.status_code == 200
    assert_error(await chat(client, world, tokens["access_token"]), 401, INVALID_TOKEN)
    assert (await refresh(client, oauth_client, tokens["refresh_token"])).status_code == 400  # the grant ended


async def test_a_confidential_client_revokes_with_its_secret_and_not_without(app, client, db, world):
    oauth_client, tokens = await user_tokens(app, db, world, public=False)
    form = {"token": tokens["refresh_token"], "token_type_hint": "refresh_token"}
    without = await client.post("/o/revoke_token/", data=form | {"client_id": oauth_client.client_id})
    assert without.status_code in (400, 401) and without.json()["error"] == "invalid_client"
    assert (await chat(client, world, tokens["access_token"])).status_code == 200
    r = await client.post("/o/revoke_token/", data=form, auth=(oauth_client.client_id, oauth_client.secret))
    assert r.status_code == 200
    assert_error(await chat(client, world, tokens["access_token"]), 401, INVALID_TOKEN)


async def test_revoking_an_unknown_token_is_200_and_another_clients_token_is_refused(app, client, db, world):
    oauth_client, tokens = await user_tokens(app, db, world, public=True)
    other = await register(db, world, public=True)
    unknown = await client.post("/o/revoke_token/", data={"token": "cbat_nothing", "client_id": other.client_id})
    assert unknown.status_code == 200  # RFC 7009 §2.2: nothing to reveal
    foreign = await client.post("/o/revoke_token/", data={"token": tokens["access_token"], "client_id": other.client_id})
    assert foreign.status_code == 400
    assert (await chat(client, world, tokens["access_token"])).status_code == 200


# --- introspection ------------------------------------------------------------------------------


async def test_introspection_by_a_confidential_client_of_the_team(app, client, db, world, settings, fake_llm):
    _, tokens = await user_tokens(app, db, world, public=True)
    resource_server = await register(db, world, public=False)
    r = await client.post("/o/introspect/", data={"token": tokens["access_token"]},
                          auth=(resource_server.client_id, resource_server.secret))  # fmt: skip
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["active"] is True and body["scope"] == "chatbots:interact" and body["username"] == world.user.email
    assert body["token_type"] == "Bearer" and body["team_id"] == world.team.id

    other_team = await make_world(db, settings, api_base=fake_llm.base_url)
    outsider = await register(db, other_team, public=False)
    r = await client.post("/o/introspect/", data=outsider.auth({"token": tokens["access_token"]}))
    assert r.status_code == 200 and r.json() == {"active": False}

    await client.post("/o/revoke_token/", data={"token": tokens["access_token"], "client_id": _.client_id})
    r = await client.post("/o/introspect/", data=resource_server.auth({"token": tokens["access_token"]}))
    assert r.json() == {"active": False}


async def test_introspection_needs_an_authenticated_confidential_client(app, client, db, world):
    public_client, tokens = await user_tokens(app, db, world, public=True)
    r = await client.post("/o/introspect/", data={"token": tokens["access_token"], "client_id": public_client.client_id})
    assert r.status_code in (400, 401) and r.json()["error"] == "invalid_client"


# --- metadata -----------------------------------------------------------------------------------


async def test_metadata_document(app):
    async with browser(app, "https://auth.example") as https:  # RFC 8414 wants an https issuer
        r = await https.get("/.well-known/oauth-authorization-server")
    assert r.status_code == 200
    doc = r.json()
    AuthorizationServerMetadata(doc).validate()
    assert doc["issuer"] == "https://auth.example"
    assert doc["authorization_endpoint"] == "https://auth.example/o/authorize/"
    assert doc["token_endpoint"] == "https://auth.example/o/token/"
    assert doc["revocation_endpoint"] == "https://auth.example/o/revoke_token/"
    assert doc["introspection_endpoint"] == "https://auth.example/o/introspect/"
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert "chatbots:interact" in doc["scopes_supported"]
    assert "implicit" not in doc["grant_types_supported"] and "password" not in doc["grant_types_supported"]


# --- the access token as a credential --------------------------------------------------------------


async def test_a_token_of_team_a_on_team_bs_chatbot_is_404(app, client, db, world, settings, fake_llm):
    other = await make_world(db, settings, api_base=fake_llm.base_url)
    _, tokens = await user_tokens(app, db, world, public=True)
    r = await client.post(other.url, json={"message": "hi"}, headers=bearer(tokens["access_token"]))
    assert_error(r, 404, {"detail": "No chatbot matches the given query."})
    body = trigger_body(other)
    r = await client.post("/api/trigger_bot", json=body, headers=bearer(tokens["access_token"]))
    assert_error(r, 404, {"detail": "No chatbot matches the given query."})


async def test_a_token_without_chatbots_interact_is_403(app, client, db, world):
    _, tokens = await user_tokens(app, db, world, scope=None, public=True, scopes=["sessions:read"])
    assert tokens["scope"] == "sessions:read"
    assert_error(await chat(client, world, tokens["access_token"]), 403, FORBIDDEN)
    r = await client.post("/api/trigger_bot", json=trigger_body(world), headers=bearer(tokens["access_token"]))
    assert_error(r, 403, FORBIDDEN)


async def test_membership_and_activity_are_rechecked_on_every_request(app, client, db, world):
    _, tokens = await user_tokens(app, db, world, public=True)
    async with db() as s:
        await s.execute(update(User).where(User.id == world.user.id).values(is_active=False))
        await s.commit()
    assert_error(await chat(client, world, tokens["access_token"]), 401, {"detail": "User inactive or deleted."})
    async with db() as s:
        await s.execute(update(User).where(User.id == world.user.id).values(is_active=True))
        await s.execute(delete(Membership).where(Membership.user_id == world.user.id))
        await s.commit()
    r = await chat(client, world, tokens["access_token"])
    assert_error(r, 401, {"detail": "Incorrect authentication credentials."})


async def test_an_expired_or_unknown_access_token_is_401(app, client, db, world):
    _, tokens = await user_tokens(app, db, world, public=True)
    await set_token_row(db, OAuthToken.access_token_hash, tokens["access_token"], access_expires_at=utcnow() - SECOND)
    assert_error(await chat(client, world, tokens["access_token"]), 401, INVALID_TOKEN)
    assert_error(await chat(client, world, "cbat_" + "x" * 43), 401, INVALID_TOKEN)
    assert_error(await chat(client, world, "neither-a-token-nor-a-key"), 401, INVALID_TOKEN)


async def test_api_keys_still_work_as_bearer_after_oauth_tokens(client, world):
    r = await client.post(world.url, json={"message": "hi"}, headers=bearer(world.key))
    assert r.status_code == 200, r.text


async def test_issued_tokens_never_reach_the_logs_even_at_debug(app, db, world, caplog):
    import logging

    with caplog.at_level(logging.DEBUG):
        _, tokens = await user_tokens(app, db, world, public=True)
    assert tokens["access_token"] not in caplog.text and tokens["refresh_token"] not in caplog.text
