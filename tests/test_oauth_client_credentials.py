"""Client credentials (SPEC §4.4): a team's machine client acts for the team without a user, on
the chatbots it lists only; it may trigger but not chat."""


from app.models import Chatbot
from app.services.chatbots import publish_version
from tests.assertions import assert_error
from tests.oauth_helpers import add_api_channel, bearer, register, trigger_body

NO_USER = {"detail": "A client-credentials token has no user to chat as; use a user credential."}


async def machine_token(client, db, world, scope=None):  # type: ignore[no-untyped-def]
    machine = await register(db, world, client_credentials=True, chatbots=[str(world.chatbot.public_id)])
    form = {"grant_type": "client_credentials"} | ({"scope": scope} if scope else {})
    r = await client.post("/o/token/", data=form, auth=(machine.client_id, machine.secret))
    assert r.status_code == 200, r.text
    assert "refresh_token" not in r.json() and r.headers["cache-control"] == "no-store"
    return r.json()


async def test_a_machine_token_triggers_its_chatbot(client, db, world):
    await add_api_channel(db, world)
    token = await machine_token(client, db, world)
    assert token["scope"].split() and "chatbots:interact" in token["scope"].split()  # none asked: all allowed
    r = await client.post("/api/trigger_bot", json=trigger_body(world), headers=bearer(token["access_token"]))
    assert r.status_code == 200, r.text


async def test_a_machine_token_is_403_on_another_chatbot_of_its_team(client, db, world):
    async with db() as s:
        other = Chatbot(team_id=world.team.id, name="Other", llm_provider_id=world.provider.id,
                        llm_model="fake-model", system_prompt="x")  # fmt: skip
        s.add(other)
        await s.flush()
        await publish_version(s, other)
        await s.commit()
        other_public_id = other.public_id
    await add_api_channel(db, world, other.id)
    token = await machine_token(client, db, world)
    body = trigger_body(world) | {"experiment": str(other_public_id)}
    r = await client.post("/api/trigger_bot", json=body, headers=bearer(token["access_token"]))
    assert_error(r, 403, {"detail": "You do not have permission to perform this action."})


async def test_a_machine_token_cannot_chat(client, db, world):
    token = await machine_token(client, db, world)
    r = await client.post(world.url, json={"message": "hi"}, headers=bearer(token["access_token"]))
    assert_error(r, 403, NO_USER)


async def test_a_machine_token_without_interact_scope_is_403(client, db, world):
    await add_api_channel(db, world)
    token = await machine_token(client, db, world, scope="chatbots:read")
    r = await client.post("/api/trigger_bot", json=trigger_body(world), headers=bearer(token["access_token"]))
    assert_error(r, 403, {"detail": "You do not have permission to perform this action."})


async def test_only_a_teams_confidential_machine_client_gets_client_credentials(client, db, world):
    public_app = await register(db, world, public=True)
    code_app = await register(db, world, public=False)
    r = await client.post("/o/token/", data={"grant_type": "client_credentials", "client_id": public_app.client_id})
    assert r.status_code in (400, 401) and r.json()["error"] in ("invalid_client", "unauthorized_client")
    r = await client.post("/o/token/", data={"grant_type": "client_credentials"}, auth=(code_app.client_id, code_app.secret))
    assert r.status_code == 400 and r.json()["error"] == "unauthorized_client"
