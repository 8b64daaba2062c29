"""Hardening: inputs and client behaviours at the edges that must still get a clean, JSON answer
(or, where no answer can be delivered, a quiet log line), and no traceback."""

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
