"""The OpenAPI document says what the service does (issue 9, item 4): the committed
``openapi.json`` is the generated document, every 400 body fits the one declared 400 schema,
and the rules the service enforces on ``message`` and ``Idempotency-Key`` are in the document
and agree with the service, answer by answer. ``.ci/conformance`` then runs schemathesis
against a real server (the fuzzer's side of the same promise)."""

import json
import re
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from app.config import Settings
from app.main import create_app
from app.openapi_file import COMMITTED, default_document, render
from tests.factories import World

CHAT = "/channels/api/{experiment_id}/incoming_message"
PINNED = "/channels/api/{experiment_id}/v{version}/incoming_message"
TRIGGER = "/api/trigger_bot"
DELIVERY = "/api/deliveries/{delivery_id}"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return default_document()


def response_validator(document: dict[str, Any], path: str, method: str, status: int) -> Draft202012Validator:
    """The declared JSON schema of one response, its ``$ref``s resolved in the document."""
    schema = document["paths"][path][method]["responses"][str(status)]["content"]["application/json"]["schema"]
    registry = Registry().with_resource("urn:doc", Resource(contents=document, specification=DRAFT202012))
    return Draft202012Validator({"$ref": "urn:doc" + schema["$ref"]}, registry=registry)


def test_committed_openapi_json_is_the_generated_document(document):
    committed = COMMITTED.read_text(encoding="utf-8")
    assert json.loads(committed) == document, "openapi.json is stale: run `python -m app.openapi_file`"
    assert committed == render(document)


async def test_the_served_document_is_the_committed_one_under_default_limits(client, settings):
    served = (await client.get("/openapi.json")).json()
    assert settings.max_message_chars == Settings.model_construct().max_message_chars
    assert served == json.loads(COMMITTED.read_text(encoding="utf-8"))


def test_message_limit_setting_is_written_into_the_document():
    doc = create_app(Settings.model_construct(max_message_chars=77)).openapi()
    schemas = doc["components"]["schemas"]
    assert schemas["ApiMessage"]["properties"]["message"]["maxLength"] == 77
    for name in ("prompt_text", "message_text"):
        assert schemas["TriggerBotMessageRequest"]["properties"][name]["maxLength"] == 77


def test_every_authenticated_operation_declares_the_statuses_of_authentication(document):
    for path in (CHAT, PINNED, TRIGGER, DELIVERY):
        for operation in document["paths"][path].values():
            assert {"401", "403", "404", "405", "429", "503"} <= set(operation["responses"]), path


def test_oauth_machine_endpoints_are_documented_with_their_own_error_shape(document):
    paths = document["paths"]
    for path in ("/o/token/", "/o/revoke_token/", "/o/introspect/"):
        operation = paths[path]["post"]
        assert "application/x-www-form-urlencoded" in operation["requestBody"]["content"]
        for status in ("400", "401"):
            ref = operation["responses"][status]["content"]["application/json"]["schema"]["$ref"]
            assert ref == "#/components/schemas/OAuthErrorResponse"
    assert "429" in paths["/o/token/"]["post"]["responses"]
    assert "200" in paths["/.well-known/oauth-authorization-server"]["get"]["responses"]
    assert "/o/authorize/" not in paths  # a page for people, not for machines


async def test_json_parse_error_400_fits_the_declared_400(client, world: World, document):
    r = await client.post(world.url, content=b"{not json", headers={**world.headers, "Content-Type": "application/json"})
    assert r.status_code == 400 and set(r.json()) == {"detail"}
    response_validator(document, CHAT, "post", 400).validate(r.json())


async def test_field_validation_400_fits_the_declared_400(client, world: World, document):
    r = await client.post(world.url, json={"message": 5}, headers=world.headers)
    assert r.status_code == 400 and set(r.json()) == {"detail", "errors"}
    response_validator(document, CHAT, "post", 400).validate(r.json())


async def test_too_long_idempotency_key_400_fits_the_declared_400_and_the_header_rule(client, world: World, document):
    header = next(p for p in document["paths"][CHAT]["post"]["parameters"] if p["name"] == "Idempotency-Key")
    rules = {k: header["schema"][k] for k in ("type", "minLength", "maxLength", "pattern")}
    assert rules == {"type": "string", "minLength": 1, "maxLength": 255, "pattern": r"\S"}
    too_long = "k" * 256
    r = await client.post(world.url, json={"message": "hi"}, headers={**world.headers, "Idempotency-Key": too_long})
    assert r.status_code == 400 and set(r.json()) == {"detail"}
    response_validator(document, CHAT, "post", 400).validate(r.json())
    ok = await client.post(world.url, json={"message": "hi"}, headers={**world.headers, "Idempotency-Key": "k" * 255})
    assert ok.status_code == 200, ok.text


MESSAGES = ["hello", "", " ", "\t\n ", "\u00a0\u2003", "a\x00b", "\x00", " x ", "é", "\u00a0x"]


@pytest.mark.parametrize("message", MESSAGES, ids=repr)
async def test_the_message_pattern_admits_exactly_what_the_service_accepts(client, world: World, document, message):
    rules = document["components"]["schemas"]["ApiMessage"]["properties"]["message"]
    in_schema = len(message) >= rules["minLength"] and re.search(rules["pattern"], message) is not None
    r = await client.post(world.url, json={"message": message}, headers=world.headers)
    assert r.status_code == (200 if in_schema else 400), (message, r.text)


async def test_a_message_at_the_documented_limit_passes_and_one_over_it_is_refused(client, world: World, document):
    limit = document["components"]["schemas"]["ApiMessage"]["properties"]["message"]["maxLength"]
    at_limit = await client.post(world.url, json={"message": "a" * limit}, headers=world.headers)
    over = await client.post(world.url, json={"message": "a" * (limit + 1)}, headers=world.headers)
    assert (at_limit.status_code, over.status_code) == (200, 400), over.text


async def test_trigger_text_rules_are_in_the_document(document):
    properties = document["components"]["schemas"]["TriggerBotMessageRequest"]["properties"]
    assert properties["identifier"]["maxLength"] == 320
    assert properties["experiment"]["format"] == "uuid"
    assert properties["session_data"]["not"] == {"required": ["page_context"]}
    assert len(document["components"]["schemas"]["TriggerBotMessageRequest"]["oneOf"]) == 2


async def test_unsupported_method_answers_405_json_with_allow(client: httpx.AsyncClient, world: World):
    r = await client.put(world.url, json={"message": "hi"}, headers=world.headers)
    assert r.status_code == 405 and r.headers["allow"] == "POST" and set(r.json()) == {"detail"}
