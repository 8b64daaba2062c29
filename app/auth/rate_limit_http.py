"""The HTTP side of rate limits (``app.auth.rate_limits``): the client address, the dependency
that counts a team's request on the three endpoints, the guard around API authentication, and
the middleware that puts ``X-RateLimit-*`` on every counted response.

A response's headers are those of the limit its request was counted against: the team's on
the three endpoints once authenticated (the 200s and every later error, a 400 included), the
failed-authentication limit's on a 401. A 429 carries its own (``RateLimited``).
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.auth.principal import Principal
from app.auth.rate_limits import RateLimiter, RateLimitStatus
from app.errors import NotAuthenticated

_HEADERS_KEY = "rate_limit_headers"


def rate_limiter(request: Request) -> RateLimiter:
    return request.app.state.runtime.rate_limiter


def client_ip(request: Request) -> str | None:
    """The client's address as the server gives it: uvicorn has already replaced it with the
    forwarded one when the peer is a trusted proxy (``--forwarded-allow-ips``)."""
    return request.client.host if request.client else None


def report(request: Request, status: RateLimitStatus | None) -> None:
    """Have this request's response carry ``status`` as its ``X-RateLimit-*`` headers."""
    if status is not None:
        request.scope.setdefault("state", {})[_HEADERS_KEY] = status.headers()


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


class RateLimitHeadersMiddleware:
    """Adds the headers ``report`` left in the request's state to its response, whatever the
    response is (a handler's return, an error handler's JSON, the 500 of last resort)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and (
                headers := state.get(_HEADERS_KEY)
            ):
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [
                    *message.get("headers", []),
                    *(
                        (name.lower().encode(), value.encode())
                        for name, value in headers.items()
                        if name.lower().encode() not in present
                    ),
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)
