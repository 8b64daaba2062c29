"""How a provider's answer is classified for the delivery worker (app/channels/base.py)."""

import httpx
import pytest

from app.channels.base import failure_from_response, failure_from_transport


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried_and_retry_after_is_read(status: int) -> None:
    failed = failure_from_response(httpx.Response(status, headers={"Retry-After": "7"}, text="busy"))
    assert not failed.permanent and failed.retry_after == 7.0
    assert failed.reason == f"{status}: busy"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_client_errors_fail_at_once_with_the_providers_text(status: int) -> None:
    failed = failure_from_response(httpx.Response(status, text='{"description": "chat not found"}'))
    assert failed.permanent and failed.retry_after is None
    assert "chat not found" in failed.reason


def test_a_retry_after_that_is_a_date_leaves_the_backoff_to_the_worker() -> None:
    failed = failure_from_response(httpx.Response(503, headers={"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}))
    assert not failed.permanent and failed.retry_after is None


def test_transport_errors_are_transient() -> None:
    failed = failure_from_transport(httpx.ConnectError("connection refused"))
    assert not failed.permanent and "connection refused" in failed.reason
