"""The rate limiter's functions for the login page and ``POST /o/token/`` (SPEC §4.5, §4.7),
called directly as those routes will call them, in memory and on a real Redis server; and the
parts under every limit: client and account keys, the settings, the moving window's reset,
and a storage that fails."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import ValidationError

from app.auth.rate_limits import (
    RATE_LIMIT_EXCEEDED,
    RateLimited,
    RateLimiter,
    RateLimitStatus,
    account_key,
    client_key,
    open_rate_limiter,
)
from app.config import Settings
from tests.redis_server import free_port, new_ip

SMALL = {
    "rate_limit_login_account": "2/15 minutes",
    "rate_limit_login_ip": "3/15 minutes",
    "rate_limit_token": "3/minute",
}


@pytest.fixture
async def limiter(limit_storage: dict[str, Any]) -> AsyncIterator[RateLimiter]:
    async with open_rate_limiter(Settings(_env_file=None, **SMALL, **limit_storage)) as built:
        yield built


def new_email() -> str:
    return f"user-{uuid.uuid4().hex[:10]}@example.com"


def assert_limited(exc: RateLimited, limit: int, window: int) -> None:
    assert exc.status_code == 429
    assert exc.body() == {"detail": RATE_LIMIT_EXCEEDED, "available_in": exc.status.reset_after}
    assert 1 <= exc.status.reset_after <= window
    assert exc.headers == {
        "Retry-After": str(exc.status.reset_after),
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(exc.status.reset_after),
    }


# --- login ---------------------------------------------------------------------------------------


async def test_login_failures_are_limited_per_account(limiter):
    email = new_email()
    for _ in range(2):  # each from another address: the account's limit, not the address's
        ip = new_ip()
        await limiter.check_login(ip, email)
        await limiter.record_login_failure(ip, email)
    with pytest.raises(RateLimited) as refused:
        await limiter.check_login(new_ip(), email)
    assert_limited(refused.value, 2, 15 * 60)
    await limiter.check_login(new_ip(), new_email())  # other accounts may still log in


async def test_login_failures_are_limited_per_address_across_accounts(limiter):
    ip = new_ip()
    for _ in range(3):
        email = new_email()
        await limiter.check_login(ip, email)
        await limiter.record_login_failure(ip, email)
    with pytest.raises(RateLimited) as refused:
        await limiter.check_login(ip, new_email())
    assert_limited(refused.value, 3, 15 * 60)
    await limiter.check_login(new_ip(), new_email())  # other addresses may still log in


async def test_login_successes_are_not_counted(limiter):
    ip, email = new_ip(), new_email()
    for _ in range(10):  # a check without a recorded failure is a success
        await limiter.check_login(ip, email)
    await limiter.record_login_failure(ip, email)
    await limiter.check_login(ip, email)  # one failure of two allowed


async def test_login_account_ignores_case_and_surrounding_spaces(limiter):
    email = new_email()
    await limiter.record_login_failure(new_ip(), email.upper())
    await limiter.record_login_failure(new_ip(), f"  {email} ")
    with pytest.raises(RateLimited):
        await limiter.check_login(new_ip(), email)


async def test_record_login_failure_reports_the_tighter_limit(limiter):
    ip, email = new_ip(), new_email()
    first = await limiter.record_login_failure(ip, email)
    assert first is not None
    # the account's 1 of 2 left, not the address's 2 of 3
    assert (first.limit, first.remaining) == (2, 1)
    await limiter.record_login_failure(ip, new_email())
    third = await limiter.record_login_failure(ip, new_email())  # that account has 1 left
    assert third is not None
    assert (third.limit, third.remaining) == (3, 0)  # the address has none


# --- OAuth token endpoint ------------------------------------------------------------------------


async def test_token_endpoint_is_limited_per_address(limiter):
    ip = new_ip()
    statuses = [await limiter.hit_token_endpoint(ip) for _ in range(3)]
    assert [(s.limit, s.remaining) for s in statuses if s] == [(3, 2), (3, 1), (3, 0)]
    assert all(1 <= s.reset_after <= 60 for s in statuses if s)
    assert statuses[0] is not None and statuses[0].headers() == {
        "X-RateLimit-Limit": "3",
        "X-RateLimit-Remaining": "2",
        "X-RateLimit-Reset": str(statuses[0].reset_after),
    }
    with pytest.raises(RateLimited) as refused:
        await limiter.hit_token_endpoint(ip)
    assert_limited(refused.value, 3, 60)
    assert await limiter.hit_token_endpoint(new_ip()) is not None  # another address


async def test_moving_window_frees_a_slot_when_available_in_says(limit_storage):
    """The 429's ``available_in`` is a promise: a request made then is let through."""
    settings = Settings(_env_file=None, rate_limit_token="2/2 seconds", **limit_storage)
    async with open_rate_limiter(settings) as limiter:
        ip = new_ip()
        for _ in range(2):
            await limiter.hit_token_endpoint(ip)
        with pytest.raises(RateLimited) as refused:
            await limiter.hit_token_endpoint(ip)
        assert refused.value.status.reset_after <= 2
        await asyncio.sleep(refused.value.status.reset_after)
        assert await limiter.hit_token_endpoint(ip) is not None


async def test_switched_off_limiter_counts_nothing():
    settings = Settings(_env_file=None, rate_limit_enabled=False, rate_limit_token="1/minute")
    async with open_rate_limiter(settings) as limiter:
        ip, email = new_ip(), new_email()
        for _ in range(3):
            assert await limiter.hit_token_endpoint(ip) is None
            assert await limiter.record_login_failure(ip, email) is None
            await limiter.check_login(ip, email)


# --- failing storage -----------------------------------------------------------------------------


async def test_unreachable_redis_lets_requests_through_quickly():
    """Decision: a failing Redis must not take the API down; each call is bounded by
    ``redis_timeout_seconds`` and reports no status (so no headers)."""
    url = f"async+redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    settings = Settings(_env_file=None, redis_url=url, redis_timeout_seconds=0.2)
    async with open_rate_limiter(settings) as limiter:
        started = time.monotonic()
        assert await limiter.hit_team(1) is None
        assert await limiter.hit_token_endpoint("10.0.0.1") is None
        await limiter.check_login("10.0.0.1", "a@example.com")
        await limiter.check_auth_failures("10.0.0.1")
        assert time.monotonic() - started < 5


async def test_redis_connections_are_closed_with_the_limiter(redis_url):
    """The runtime closes its limiter at shutdown: no connection is left open on Redis."""
    import coredis

    probe = coredis.Redis.from_url(redis_url.removeprefix("async+"))
    before = len(await probe.client_list())  # the probe's own
    async with open_rate_limiter(Settings(_env_file=None, redis_url=redis_url)) as limiter:
        assert await limiter.hit_team(1) is not None
        assert len(await probe.client_list()) == before + 1
    await asyncio.sleep(0.1)  # the server notices the closed socket
    assert len(await probe.client_list()) == before


async def test_memory_expiry_task_is_stopped_with_the_limiter():
    async with open_rate_limiter(Settings(_env_file=None)) as limiter:
        await limiter.hit_team(1)
        timer = limiter.storage.timer
    await asyncio.sleep(0)
    assert timer is None or timer.done()


# --- keys and settings ---------------------------------------------------------------------------


def test_client_key_counts_ipv6_per_64_and_mapped_ipv4_as_ipv4():
    same_64 = client_key("2001:db8:1:2:aaaa::1"), client_key("2001:db8:1:2:bbbb::2")
    assert same_64 == ("2001:db8:1:2::/64", "2001:db8:1:2::/64")
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == client_key("192.0.2.7") == "192.0.2.7"
    assert client_key(None) == "unknown"
    assert client_key("testclient") == "testclient"


def test_account_key_is_a_hash_not_the_address():
    assert account_key(" Someone@Example.com") == account_key("someone@example.com")
    assert "example" not in account_key("someone@example.com")


def test_defaults_are_the_spec_limits():
    settings = Settings(_env_file=None)
    assert settings.rate_limit_enabled is True
    assert settings.redis_url is None
    assert settings.rate_limit_team == "2000/5 minutes"
    assert settings.rate_limit_auth_failures == "100/5 minutes"
    assert settings.rate_limit_login_account == "10/15 minutes"
    assert settings.rate_limit_login_ip == "20/15 minutes"
    assert settings.rate_limit_token == "60/minute"


@pytest.mark.parametrize("field", ["rate_limit_team", "rate_limit_token", "rate_limit_login_ip"])
def test_a_malformed_limit_is_refused_at_start_up(field):
    with pytest.raises(ValidationError, match=field):
        Settings(_env_file=None, **{field: "2000 per fortnight"})


def test_rate_limit_status_headers_are_whole_numbers():
    assert RateLimitStatus(limit=5, remaining=0, reset_after=12).headers() == {
        "X-RateLimit-Limit": "5",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "12",
    }


# --- several processes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("workers", "redis", "warned"), [("2", False, True), ("2", True, False), ("1", False, False)]
)
def test_serve_warns_when_several_workers_count_in_memory(
    monkeypatch, database_url, workers, redis, warned
):
    import uvicorn
    from typer.testing import CliRunner

    from app import cli

    monkeypatch.setenv("CHATBOTS_DATABASE_URL", database_url)
    monkeypatch.setenv("CHATBOTS_SECRET_KEY", "test-secret-key")
    if redis:
        monkeypatch.setenv("CHATBOTS_REDIS_URL", "async+redis://127.0.0.1:6379/0")
    else:
        monkeypatch.delenv("CHATBOTS_REDIS_URL", raising=False)
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)  # no server: only the warning
    result = CliRunner().invoke(cli.app, ["serve", "--workers", workers])
    assert result.exit_code == 0, result.output
    assert ("CHATBOTS_REDIS_URL" in result.stderr) is warned, result.stderr
