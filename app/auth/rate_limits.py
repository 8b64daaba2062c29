"""Rate limits (SPEC §4.7) on the ``limits`` library's async API: what is counted, under which
key, and the answer when a key is over its limit. Nothing here knows FastAPI: the HTTP side
(headers on responses, the route dependencies) is ``app.auth.rate_limit_http``.

Strategy: a **moving window** for every limit. A fixed window lets a client spend its whole
quota at the end of one window and again at the start of the next (2× the limit within
seconds), which is exactly what a limit on password or key guessing must not allow; a moving
window counts the last 5 (or 15) minutes, whenever they start. Its cost is one timestamp per
counted request (2,000 per busy team at the default), small in memory and in Redis, and its
``Retry-After`` is exact: the moment the oldest counted request leaves the window.

Storage: in this process's memory by default; Redis when ``CHATBOTS_REDIS_URL`` is set, so
that every process and host shares one count (with N processes on memory each allows the
limit, N times over). If the storage fails (Redis down) the request is let through and a
warning logged: rate limits protect the service, they must not take it down with them.
"""

import hashlib
import ipaddress
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, Storage
from limits.storage import storage_from_string
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

from app.config import Settings
from app.errors import DomainError

log = logging.getLogger(__name__)

RATE_LIMIT_EXCEEDED = "Rate limit exceeded."
KEY_PREFIX = "chatbots-ratelimit"


@dataclass(frozen=True)
class RateLimitStatus:
    """One limit as a response reports it. ``reset_after``: whole seconds from now until the
    oldest request counted in the window leaves it (a slot frees up), at least 1."""

    limit: int
    remaining: int
    reset_after: int

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_after),
        }


class RateLimited(DomainError):
    """429: over a limit. ``available_in`` and ``Retry-After`` say when to try again."""

    status_code = 429
    detail = RATE_LIMIT_EXCEEDED

    def __init__(self, status: RateLimitStatus) -> None:
        super().__init__(RATE_LIMIT_EXCEEDED, available_in=status.reset_after)
        self.status = status
        self.headers = {"Retry-After": str(status.reset_after), **status.headers()}


def client_key(ip: str | None) -> str:
    """The key of a client address. An IPv6 client usually holds a whole /64 (and can hop
    within it at will), so IPv6 addresses are counted per /64; anything that is not an IP
    address (a Unix socket peer, a missing client) is used as it is."""
    if not ip:
        return "unknown"
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # "::ffff:1.2.3.4" is the IPv4 client 1.2.3.4
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def account_key(email: str) -> str:
    """The key of a login account: a hash of the normalised email, so that Redis keys (and a
    dump of them) carry no addresses."""
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Limits:
    team: RateLimitItem
    auth_failures: RateLimitItem
    login_account: RateLimitItem
    login_ip: RateLimitItem
    token: RateLimitItem

    @classmethod
    def from_settings(cls, settings: Settings) -> "Limits":
        return cls(
            team=parse(settings.rate_limit_team),
            auth_failures=parse(settings.rate_limit_auth_failures),
            login_account=parse(settings.rate_limit_login_account),
            login_ip=parse(settings.rate_limit_login_ip),
            token=parse(settings.rate_limit_token),
        )


class RateLimiter:
    """The service's limits. Each method either returns the status of the limit it counted
    (None when limits are off or the storage failed: no headers then) or raises
    ``RateLimited``. One per process, built by ``app.runtime``."""

    def __init__(self, storage: Storage, limits: Limits, *, enabled: bool = True) -> None:
        self.storage = storage
        self.limits = limits
        self.enabled = enabled
        self._window = MovingWindowRateLimiter(storage)

    # --- the three endpoints (per team) -----------------------------------------------------

    async def hit_team(self, team_id: int | str) -> RateLimitStatus | None:
        """Count one request of the team on incoming_message or trigger_bot."""
        return await self._hit(self.limits.team, "team", str(team_id))

    # --- API authentication (per client IP) -------------------------------------------------

    async def check_auth_failures(self, ip: str | None) -> None:
        """Refuse a client whose address is over its failed-authentication limit, before its
        credential is looked up (so a blocked guesser learns nothing, valid key or not)."""
        await self._check(self.limits.auth_failures, "auth-failure", client_key(ip))

    async def record_auth_failure(self, ip: str | None) -> RateLimitStatus | None:
        """Count one failed authentication (a 401) of this address."""
        return await self._hit(
            self.limits.auth_failures, "auth-failure", client_key(ip), refuse=False
        )

    # --- login page (per account and per IP; successes are not counted) ---------------------

    async def check_login(self, ip: str | None, email: str) -> None:
        """Call before checking a password: ``RateLimited`` if the account or the address has
        used up its failures. Attempts still in flight are not counted yet (a client sending
        many at once gets them all checked), which argon2's cost per attempt bounds."""
        await self._check(self.limits.login_account, "login-account", account_key(email))
        await self._check(self.limits.login_ip, "login-ip", client_key(ip))

    async def record_login_failure(self, ip: str | None, email: str) -> RateLimitStatus | None:
        """Call after a wrong email or password; the status of the tighter of the two limits
        (for the response's headers). Never raises: this attempt is answered as a failed
        login, the next one gets the 429."""
        account = await self._hit(
            self.limits.login_account, "login-account", account_key(email), refuse=False
        )
        address = await self._hit(self.limits.login_ip, "login-ip", client_key(ip), refuse=False)
        statuses = [s for s in (account, address) if s is not None]
        return min(statuses, key=lambda s: (s.remaining, -s.reset_after), default=None)

    # --- OAuth token endpoint (per IP, every request) ---------------------------------------

    async def hit_token_endpoint(self, ip: str | None) -> RateLimitStatus | None:
        """Count one request to ``POST /o/token/``; ``RateLimited`` over the limit."""
        return await self._hit(self.limits.token, "token", client_key(ip))

    # --- mechanics -----------------------------------------------------------------------------

    async def _hit(
        self, item: RateLimitItem, *key: str, refuse: bool = True
    ) -> RateLimitStatus | None:
        if not self.enabled:
            return None
        try:
            allowed = await self._window.hit(item, *key)
            status = await self._status(item, *key)
        except StorageError as exc:
            log.warning("rate limit storage failed, request let through: %s", exc.storage_error)
            return None
        if not allowed and refuse:
            raise RateLimited(status)
        return status

    async def _check(self, item: RateLimitItem, *key: str) -> None:
        if not self.enabled:
            return
        try:
            status = await self._status(item, *key)
        except StorageError as exc:
            log.warning("rate limit storage failed, request let through: %s", exc.storage_error)
            return
        if status.remaining <= 0:
            raise RateLimited(status)

    async def _status(self, item: RateLimitItem, *key: str) -> RateLimitStatus:
        stats = await self._window.get_window_stats(item, *key)
        return RateLimitStatus(
            limit=item.amount,
            remaining=max(stats.remaining, 0),
            reset_after=max(math.ceil(stats.reset_time - time.time()), 1),
        )

    async def close(self) -> None:
        """Release the storage: Redis's connections; the memory storage's expiry task."""
        if isinstance(self.storage, MemoryStorage):
            if self.storage.timer is not None:
                self.storage.timer.cancel()
            return
        client = getattr(getattr(self.storage, "bridge", None), "storage", None)
        if client is not None:
            client.connection_pool.disconnect()


def make_storage(settings: Settings) -> Storage:
    if not settings.redis_url:
        return MemoryStorage(wrap_exceptions=True)
    url = settings.redis_url
    if not url.startswith("async+"):
        url = f"async+{url}"  # "redis://..." works too: the async client is the only one here
    storage = storage_from_string(
        url,
        wrap_exceptions=True,
        key_prefix=KEY_PREFIX,
        # A Redis that stops answering costs each request at most this, then it is let through.
        connect_timeout=settings.redis_timeout_seconds,
        stream_timeout=settings.redis_timeout_seconds,
    )
    assert isinstance(storage, Storage)
    return storage


@asynccontextmanager
async def open_rate_limiter(settings: Settings) -> AsyncIterator[RateLimiter]:
    limiter = RateLimiter(
        make_storage(settings), Limits.from_settings(settings), enabled=settings.rate_limit_enabled
    )
    try:
        yield limiter
    finally:
        await limiter.close()
