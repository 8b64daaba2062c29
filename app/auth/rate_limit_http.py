"""The HTTP side of rate limits (``app.auth.rate_limits``): the client address, the dependency
that counts a team's request on the three endpoints, the guard around API authentication, and
``report``, which has a counted request's response carry ``X-RateLimit-*`` whatever it is.

A response's headers are those of the limit its request was counted against: the team's on
the three endpoints once authenticated (the 200s and every later error, a 400 included), the
failed-authentication limit's on a 401. A 429 carries its own (``RateLimited``).
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Request

from app.auth.principal import Principal
from app.auth.rate_limits import RateLimiter, RateLimitStatus
from app.errors import NotAuthenticated
from app.response_headers import add_response_headers


def rate_limiter(request: Request) -> RateLimiter:
    return request.app.state.runtime.rate_limiter


def client_ip(request: Request) -> str | None:
    """The client's address as the server gives it: uvicorn has already replaced it with the
    forwarded one when the peer is a trusted proxy (``--forwarded-allow-ips``)."""
    return request.client.host if request.client else None


def report(request: Request, status: RateLimitStatus | None) -> None:
    """Have this request's response carry ``status`` as its ``X-RateLimit-*`` headers."""
    if status is not None:
        add_response_headers(request.scope.setdefault("state", {}), status.headers())


async def count_team_request(request: Request, principal: Principal) -> None:
    """Count the request against the principal's team: 429 over the limit."""
    report(request, await rate_limiter(request).hit_team(principal.team_id))


@asynccontextmanager
async def guard_authentication(request: Request) -> AsyncIterator[None]:
    """Around resolving a request's credentials: an address over its failed-authentication
    limit gets 429 before anything is looked up, and each 401 counts against it."""
    limiter = rate_limiter(request)
    await limiter.check_auth_failures(client_ip(request))
    try:
        yield
    except NotAuthenticated:
        report(request, await limiter.record_auth_failure(client_ip(request)))
        raise
