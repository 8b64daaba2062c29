"""The auth package's shape (issue 8): a principal that knows nothing of HTTP and cannot be made
without its credential id, scopes that allow nothing not granted, and an ``Authenticator`` that
admits only the credential kinds and scopes it is given (deny by default)."""

import subprocess
import sys
from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI, Security

from app.auth.dependencies import Authenticator
from app.auth.principal import Principal
from app.auth.scopes import ALL_SCOPES, INTERACT_SCOPE
from app.errors import install_error_handlers
from tests.assertions import assert_error
from tests.factories import make_world

FORBIDDEN = {"detail": "You do not have permission to perform this action."}


def test_the_principal_module_imports_nothing_of_fastapi_or_starlette() -> None:
    probe = "import sys, app.auth.principal; print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette')))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_principal_needs_its_credential_id() -> None:
    with pytest.raises(TypeError):
        Principal(kind="api_key", team_id=1, scopes=ALL_SCOPES)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="credential_id"):
        Principal(kind="api_key", credential_id="", team_id=1, scopes=ALL_SCOPES)


def test_scopes_allow_nothing_that_is_not_granted() -> None:
    none = Principal(kind="oauth", credential_id="oauth_token:1", team_id=1, scopes=frozenset())
    assert not none.allows([INTERACT_SCOPE])
    assert none.allows([])  # a route that asks for no scope
    chat = Principal(kind="embed_key", credential_id="embed_key:3", team_id=1, scopes=frozenset({INTERACT_SCOPE}))
    assert chat.allows([INTERACT_SCOPE]) and not chat.allows([INTERACT_SCOPE, "sessions:read"])


def test_a_read_only_credential_may_only_read() -> None:
    key = Principal(kind="api_key", credential_id="api_key:9", team_id=1, scopes=ALL_SCOPES, read_only=True)
    assert key.allows([INTERACT_SCOPE], "GET") and key.allows([], "HEAD")
    assert not key.allows([INTERACT_SCOPE], "POST") and not key.allows([], "DELETE")


def test_a_principal_reaches_only_its_chatbots() -> None:
    team_wide = Principal(kind="api_key", credential_id="api_key:1", team_id=1, scopes=ALL_SCOPES)
    bound = Principal(kind="embed_key", credential_id="embed_key:2", team_id=1,
                      scopes=frozenset({INTERACT_SCOPE}), chatbot_ids=frozenset({7}))  # fmt: skip
    assert team_wide.may_reach(7) and team_wide.may_reach(8)
    assert bound.may_reach(7) and not bound.may_reach(8)


def test_an_authenticator_must_admit_some_kind() -> None:
    with pytest.raises(ValueError):
        Authenticator(allowed_kinds=frozenset())


@pytest.fixture
async def probe(app: Any) -> httpx.AsyncClient:
    """A small app on the suite's runtime (its store and database) with three routes guarded
    by Authenticators of different kinds and scopes."""
    probe_app = FastAPI()
    probe_app.state.runtime = app.state.runtime
    install_error_handlers(probe_app)
    keys_only = Authenticator(allowed_kinds=frozenset({"api_key"}))
    sessions_only = Authenticator(allowed_kinds=frozenset({"session"}))

    @probe_app.post("/keys")
    async def keys(p: Annotated[Principal, Security(keys_only, scopes=[INTERACT_SCOPE])]) -> dict[str, str]:
        return {"credential": p.credential_id}

    @probe_app.post("/sessions")
    async def sessions(p: Annotated[Principal, Security(sessions_only)]) -> dict[str, str]:
        return {"credential": p.credential_id}

    @probe_app.post("/unknown-scope")
    async def unknown(p: Annotated[Principal, Security(keys_only, scopes=["no:such-scope"])]) -> dict[str, str]:
        return {"credential": p.credential_id}

    transport = httpx.ASGITransport(app=probe_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://probe") as http:
        yield http


async def test_an_authenticator_admits_its_kinds_and_scopes_only(
    probe: httpx.AsyncClient, db: Any, settings: Any, fake_llm: Any
) -> None:
    world = await make_world(db, settings, api_base=fake_llm.base_url)
    headers = {"X-api-key": world.key}
    r = await probe.post("/keys", headers=headers)
    assert r.status_code == 200 and r.json()["credential"].startswith("api_key:")
    assert_error(await probe.post("/sessions", headers=headers), 403, FORBIDDEN)  # kind not admitted
    assert_error(await probe.post("/unknown-scope", headers=headers), 403, FORBIDDEN)  # scope not carried


async def test_the_documented_schemes_come_from_the_dependencies(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["apiKeyAuth"] == {"type": "apiKey", "in": "header", "name": "X-api-key"}
    assert schemes["tokenAuth"] == {"type": "http", "scheme": "bearer"}
    assert schemes["embedKeyAuth"] == {"type": "apiKey", "in": "header", "name": "X-Embed-Key"}
    assert schemes["cookieAuth"] == {"type": "apiKey", "in": "cookie", "name": "sessionid"}
    assert schemes["OAuth2"]["flows"]["authorizationCode"]["authorizationUrl"] == "/o/authorize/"


async def test_each_operation_offers_only_the_schemes_its_authenticator_admits(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()

    def offered(path: str, method: str) -> set[str]:
        return {name for requirement in doc["paths"][path][method]["security"] for name in requirement}

    everything = {"OAuth2", "tokenAuth", "apiKeyAuth", "embedKeyAuth", "cookieAuth"}
    assert offered("/channels/api/{experiment_id}/incoming_message", "post") == everything
    assert offered("/channels/api/{experiment_id}/v{version}/incoming_message", "post") == everything
    # An embed key may only chat: the document does not offer it where it would be a 403.
    assert offered("/api/trigger_bot", "post") == everything - {"embedKeyAuth"}
    assert offered("/api/deliveries/{delivery_id}", "get") == everything - {"embedKeyAuth"}
