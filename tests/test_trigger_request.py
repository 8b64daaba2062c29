"""The body of ``POST /api/trigger_bot`` (SPEC §3.3): what is refused before any lookup, field by
field, as the 400 envelope lists it. (The endpoint is tested in test_trigger_bot.py.)"""

import json
from typing import Any

import pytest
from pydantic import ValidationError

from app.routers.body import validation_errors
from app.schemas import PAGE_CONTEXT_IN_SESSION_DATA, TriggerBotMessageRequest, trigger_errors

VALID = {"identifier": "+27821234567", "platform": "whatsapp",
         "experiment": "3f2a3c6e-1f0b-4c1e-9a4c-2b1d7f9e8a01", "prompt_text": "Remind them."}  # fmt: skip
MAX_TEXT = 32_000


def errors_of(body: dict[str, Any]) -> dict[str, list[str]]:
    try:
        parsed = TriggerBotMessageRequest.model_validate_json(json.dumps(body))
    except ValidationError as exc:
        return validation_errors(exc)
    return trigger_errors(parsed, MAX_TEXT)


def test_a_valid_trigger_has_no_errors_and_its_defaults() -> None:
    parsed = TriggerBotMessageRequest.model_validate_json(json.dumps({**VALID, "unknown": 1}))
    assert trigger_errors(parsed, MAX_TEXT) == {}
    assert (parsed.start_new_session, parsed.session_data, parsed.participant_data) == (False, {}, {})
    assert parsed.page_context is None and parsed.message_text is None


@pytest.mark.parametrize("field", ["identifier", "platform", "experiment"])
def test_each_required_field_missing(field: str) -> None:
    body = {k: v for k, v in VALID.items() if k != field}
    assert errors_of(body) == {field: ["This field is required."]}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"start_new_session": "yes"}, "start_new_session"),
        ({"identifier": 27821234567}, "identifier"),
        ({"prompt_text": 5}, "prompt_text"),
        ({"session_data": []}, "session_data"),
        ({"participant_data": "x"}, "participant_data"),
        ({"page_context": "https://example.com"}, "page_context"),
        ({"platform": "pigeon"}, "platform"),
        ({"platform": None}, "platform"),
    ],
)
def test_wrong_types_and_an_unknown_platform_are_refused_not_coerced(change: dict[str, Any], field: str) -> None:
    assert list(errors_of({**VALID, **change})) == [field]


def test_exactly_one_of_prompt_text_and_message_text() -> None:
    neither = {k: v for k, v in VALID.items() if k != "prompt_text"}
    assert errors_of(neither) == {"prompt_text": ["This field is required (or message_text)."]}
    both = {**VALID, "message_text": "See you tomorrow."}
    assert errors_of(both) == {"non_field_errors": ["Give exactly one of prompt_text and message_text."]}
    assert errors_of({**neither, "message_text": "See you tomorrow."}) == {}


@pytest.mark.parametrize("field", ["prompt_text", "message_text", "identifier"])
def test_a_blank_text_is_an_error_on_that_field(field: str) -> None:
    body = {k: v for k, v in VALID.items() if k != "prompt_text"} | {"message_text": "x", field: "  "}
    if field == "prompt_text":
        body.pop("message_text")
    assert errors_of(body) == {field: ["This field may not be blank."]}


def test_too_long_identifier_and_text() -> None:
    telegram = {**VALID, "platform": "telegram"}  # any id of the length limit, not a phone number
    assert list(errors_of({**telegram, "identifier": "9" * 321})) == ["identifier"]
    assert errors_of({**telegram, "identifier": "9" * 320}) == {}
    assert list(errors_of({**VALID, "prompt_text": "x" * (MAX_TEXT + 1)})) == ["prompt_text"]


def test_page_context_cannot_be_set_through_session_data() -> None:
    body = {**VALID, "session_data": {"page_context": {"url": "https://example.com"}}}
    assert errors_of(body) == {"session_data": [PAGE_CONTEXT_IN_SESSION_DATA]}
    assert errors_of({**VALID, "page_context": {"url": "https://example.com"}}) == {}


def test_the_experiment_must_be_a_uuid() -> None:
    assert errors_of({**VALID, "experiment": "not-a-uuid"}) == {"experiment": ["Must be a valid UUID."]}


@pytest.mark.parametrize("number", ["12345", "+27 82 ABC 4567", "+999 123", "0821234567"])
def test_a_whatsapp_number_that_does_not_parse_is_an_error_on_identifier(number: str) -> None:
    errors = errors_of({**VALID, "identifier": number})
    assert list(errors) == ["identifier"] and "phone number" in errors["identifier"][0]


def test_other_platforms_take_any_identifier() -> None:
    assert errors_of({**VALID, "platform": "telegram", "identifier": "12345"}) == {}
