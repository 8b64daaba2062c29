"""A short-lived, in-process memory of credential lookups, so that a steady client costs no
database round trip to authenticate.

What is remembered is the looked-up record (a key's row with its user and membership, a token's
row...), never the decision: every request still checks expiry, revocation, activity, role,
origin and CSRF against it. The bound on staleness is ``CHATBOTS_AUTH_CACHE_SECONDS``: a key
revoked, a user deactivated or a member removed by another process (the CLI, another replica)
stops working within that many seconds; a revocation made through this process (logout, a
token revoked or a refresh family burnt) calls ``forget`` and takes effect at once. Entries are
keyed by the SHA-256 of the presented credential, so no secret is held in memory beyond the
request. Failed lookups are not remembered.
"""

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

V = TypeVar("V")
MAX_ENTRIES = 10_000


class CredentialCache:
    def __init__(self, ttl_seconds: float, max_entries: int = MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()

    async def get_or_load(self, key: Hashable, load: Callable[[], Awaitable[V | None]]) -> V | None:
        """The remembered value for ``key`` if younger than the TTL, else ``load()``'s (kept
        unless None)."""
        if self.ttl <= 0:
            return await load()
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            return entry[1]
        value = await load()
        if value is None:
            self._entries.pop(key, None)
            return None
        self._entries[key] = (now + self.ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:  # the oldest first
            self._entries.popitem(last=False)
        return value

    def forget(self, *keys: Hashable) -> None:
        for key in keys:
            self._entries.pop(key, None)

    def forget_kind(self, kind: str) -> None:
        """Every entry whose key is a tuple starting with ``kind`` (e.g. all OAuth tokens, when
        a revocation names families rather than the tokens' values)."""
        for key in [k for k in self._entries if isinstance(k, tuple) and k[:1] == (kind,)]:
            del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
