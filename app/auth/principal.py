"""Who is calling: the principal every credential resolves to (SPEC §4), and what it may do.

Nothing here knows HTTP: resolvers (``app.auth.resolvers``) build a ``Principal`` from a
credential and a ``CredentialContext``; ``app.auth.dependencies`` is the FastAPI side.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # the models pull in the database layer, which has FastAPI dependencies
    from app.auth.cache import CredentialCache
    from app.models import Role

CredentialKind = Literal["api_key", "oauth", "session", "embed_key"]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Principal:
    """A resolved credential. ``credential_id`` is required: it names the credential for
    idempotency records and audit (``"api_key:12"``), and two callers must never share one."""

    kind: CredentialKind
    credential_id: str
    team_id: int
    # What the credential may do: API keys and browser sessions carry every scope, an OAuth
    # token the ones granted, an embed key only chatbots:interact.
    scopes: frozenset[str]
    user_id: int | None = None
    user_email: str | None = None
    role: "Role | None" = None
    read_only: bool = False
    channel_id: int | None = None  # embed keys: the widget channel they belong to
    # The chatbots (ids) the credential may reach; None: every chatbot of the team. An embed
    # key reaches its channel's chatbot, a client-credentials token its client's chatbots.
    chatbot_ids: frozenset[int] | None = None

    def __post_init__(self) -> None:
        if not self.credential_id:
            raise ValueError("a principal needs its credential_id")

    def allows(self, scopes: Iterable[str], method: str = "POST") -> bool:
        """Whether it carries every one of ``scopes`` and, for an unsafe ``method``, may write.
        Nothing is allowed that is not granted: a credential without scopes may do nothing."""
        if self.read_only and method not in SAFE_METHODS:
            return False
        return all(scope in self.scopes for scope in scopes)

    def may_reach(self, chatbot_id: int) -> bool:
        return self.chatbot_ids is None or chatbot_id in self.chatbot_ids


@dataclass(frozen=True, slots=True)
class CredentialContext:
    """What a resolver may need of the request besides the credential itself: CSRF checks
    read the method, a header and a cookie; embed keys read ``Origin``/``Referer``."""

    method: str
    headers: Mapping[str, str]  # case-insensitive, first value of each
    cookies: Mapping[str, str]
    # This process's memory of recent lookups (app.auth.cache); None: always look up.
    cache: "CredentialCache | None" = None
