"""Hardening: inputs and client behaviours at the edges that must still get a clean, JSON answer
(or, where no answer can be delivered, a quiet log line), and no traceback."""

import pytest

from tests.assertions import assert_error, nothing_written

# --- a version number too long to convert ---------------------------------------------------------


async def test_a_version_longer_than_int_conversion_allows_is_404_json(client, db, world):
    """Python refuses to convert a string of over 4,300 digits to int (ValueError): the router
    must reject long digit strings before converting, not answer a plain-text 500."""
    version = "1" * 4301
    async with nothing_written(db, world):
        r = await client.post(world.version_url(version), json={"message": "hi"}, headers=world.headers)
    assert_error(r, 404, {"detail": f"Chatbot version {version} not found."})


async def test_leading_zeros_still_name_the_version(client, world):
    """The length check counts significant digits only: ``v000…01`` is still version 1, even
    with more zeros than int() would convert."""
    r = await client.post(world.version_url("0" * 5000 + "1"), json={"message": "hi"}, headers=world.headers)
    assert r.status_code == 200, r.text


# --- a credential header sent more than once ------------------------------------------------------

DUPLICATE_CREDENTIAL = {"detail": "Credential header sent more than once."}


@pytest.mark.parametrize(
    "make_headers",
    [
        pytest.param(lambda key: [("X-api-key", key), ("X-api-key", "bogus.key")], id="api-key-good-first"),
        pytest.param(lambda key: [("X-api-key", "bogus.key"), ("X-api-key", key)], id="api-key-bogus-first"),
        pytest.param(lambda key: [("X-api-key", key), ("x-API-KEY", key)], id="api-key-same-twice-any-case"),
        pytest.param(
            lambda key: [("Authorization", f"Bearer {key}"), ("Authorization", "Bearer bogus.key")],
            id="authorization-good-first",
        ),
        pytest.param(
            lambda key: [("Authorization", f"Bearer {key}"), ("Authorization", "Basic Zm9vOmJhcg==")],
            id="authorization-bearer-and-basic",
        ),
        pytest.param(
            lambda key: [("X-api-key", key), ("X-Embed-Key", "w" * 32), ("X-Embed-Key", "v" * 32)],
            id="embed-key-twice",
        ),
    ],
)
async def test_a_credential_header_sent_twice_is_refused(client, db, world, make_headers):
    """Only the first copy of a repeated header used to be judged, while a proxy in front may
    judge another (or join them): refuse the request so that the two never disagree about who
    the caller is."""
    headers = make_headers(world.key)
    async with nothing_written(db, world):
        r = await client.post(world.url, json={"message": "hi"}, headers=headers)
    assert_error(r, 401, DUPLICATE_CREDENTIAL)


async def test_each_credential_header_once_is_still_accepted(client, world):
    """Different credential headers together are not duplicates: each is checked (SPEC §4)."""
    headers = [("X-api-key", world.key), ("Authorization", f"Bearer {world.key}")]
    r = await client.post(world.url, json={"message": "hi"}, headers=headers)
    assert r.status_code == 200, r.text
