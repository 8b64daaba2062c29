"""``chatbots oauth-client`` (SPEC §4.4, §7) through typer's CliRunner against the test database:
the secret printed once and stored hashed, public clients without one, machine clients bound
to their team's chatbots, listing without secrets, revocation of the client and its tokens."""

import os

from sqlalchemy import select

from app.crypto import sha256_hex
from app.db import utcnow
from app.models import OAuthClient, OAuthToken
from tests.test_cli import all_rows, chatbot, db, env, fails, invoke, ok, ok_json, one, provider, team  # noqa: F401

CALLBACK = "https://app.example/callback"


def test_create_a_confidential_client_prints_its_secret_once_and_stores_its_hash(team: str) -> None:
    data = ok_json("oauth-client", "create", "--team", team, "--name", "Web app", "--redirect-uri", CALLBACK)
    assert set(data) == {"client_id", "client_secret"} and data["client_secret"]
    row = one(env_url(), select(OAuthClient).where(OAuthClient.client_id == data["client_id"]))
    assert row.client_secret_hash == sha256_hex(data["client_secret"])
    assert row.redirect_uris == [CALLBACK] and row.grant_types == ["authorization_code", "refresh_token"]
    listed = ok_json("oauth-client", "list", "--team", team)
    assert [c["client_id"] for c in listed] == [data["client_id"]]
    assert data["client_secret"] not in ok("oauth-client", "list", "--team", team).stdout


def test_create_a_public_client_has_no_secret(team: str) -> None:
    data = ok_json("oauth-client", "create", "--team", team, "--name", "SPA", "--redirect-uri", CALLBACK, "--public")
    assert data["client_secret"] is None
    human = ok("oauth-client", "create", "--team", team, "--name", "SPA2", "--redirect-uri", CALLBACK, "--public")
    assert "secret" not in human.stdout.lower()


def test_create_a_client_credentials_client_for_the_teams_chatbots(team: str, chatbot: str) -> None:
    data = ok_json("oauth-client", "create", "--team", team, "--name", "Backend", "--client-credentials",
                   "--chatbot", chatbot)  # fmt: skip
    row = one(env_url(), select(OAuthClient).where(OAuthClient.client_id == data["client_id"]))
    assert row.grant_types == ["client_credentials"] and len(row.chatbot_ids) == 1 and row.redirect_uris == []
    assert ok_json("oauth-client", "list", "--team", team)[0]["type"] == "client_credentials"


def test_create_refuses_bad_input(team: str, chatbot: str) -> None:
    fails("oauth-client", "create", "--team", team, "--name", "x", message="--redirect-uri")
    fails("oauth-client", "create", "--team", team, "--name", "x", "--redirect-uri", "http://app.example/cb",
          message="https")  # fmt: skip
    fails("oauth-client", "create", "--team", team, "--name", "x", "--redirect-uri", CALLBACK + "#frag",
          message="fragment")  # fmt: skip
    fails("oauth-client", "create", "--team", team, "--name", "x", "--client-credentials", message="--chatbot")
    fails("oauth-client", "create", "--team", team, "--name", "x", "--client-credentials", "--public",
          "--chatbot", chatbot, message="confidential")  # fmt: skip
    fails("oauth-client", "create", "--team", team, "--name", "x", "--redirect-uri", CALLBACK, "--scope", "admin",
          message="Unknown scope")  # fmt: skip
    fails("oauth-client", "create", "--team", "no-such-team", "--name", "x", "--redirect-uri", CALLBACK,
          message="No team")  # fmt: skip


def test_revoke_revokes_the_client_and_its_tokens(team: str) -> None:
    data = ok_json("oauth-client", "create", "--team", team, "--name", "Web app", "--redirect-uri", CALLBACK)
    client_row = one(env_url(), select(OAuthClient).where(OAuthClient.client_id == data["client_id"]))

    async def add_token(session):  # type: ignore[no-untyped-def]
        session.add(OAuthToken(client_id=client_row.id, team_id=client_row.team_id, scope="", family_id="f",
                               access_token_hash=sha256_hex(data["client_id"] + "t"), access_expires_at=utcnow()))  # fmt: skip
        await session.commit()

    db(env_url(), add_token)
    revoked = ok_json("oauth-client", "revoke", data["client_id"])
    assert revoked["client_id"] == data["client_id"] and revoked["revoked_tokens"] == 1
    tokens = all_rows(env_url(), select(OAuthToken).where(OAuthToken.client_id == client_row.id))
    assert all(t.revoked_at is not None for t in tokens)
    assert ok_json("oauth-client", "list", "--team", team)[0]["status"] == "revoked"
    fails("oauth-client", "revoke", "cbc_nope", message="No OAuth client")


def env_url() -> str:
    return os.environ["CHATBOTS_DATABASE_URL"]  # set by test_cli's ``env`` fixture


def test_oauth_client_commands_have_help_and_json() -> None:
    for command in (["create"], ["list"], ["revoke"]):
        result = invoke("oauth-client", *command, "--help")
        assert result.exit_code == 0 and "--json" in result.stdout
