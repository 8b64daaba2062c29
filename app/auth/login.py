"""Who may log in to a browser session (SPEC §4.5), and into which team; and where to go after.

Knows nothing of HTTP: the login page (``app.routers.accounts``) calls ``check_login`` and maps
``LoginRefused`` to its form. A wrong email, a wrong password, a user without a password and
an inactive user are one refusal with one message, and cost the same argon2 verification, so
neither the page nor its timing tells which it was. Only once the password is proven right
does the page say anything specific (the team choice).
"""

import asyncio
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.passwords import hash_password, verify_password
from app.errors import BadRequest
from app.models import Membership, Team, User
from app.services.admin_identity import find_user, normalize_slug

WRONG_CREDENTIALS = "The email or password is not right. Please try again."
NO_SUCH_TEAM = "You are not a member of a team with this slug."
NO_TEAM = "Your account is not a member of any team yet. Ask a team admin to add you."
MAX_PASSWORD_CHARS = 1024  # argon2 takes any length; a bound keeps one request's cost bounded
MAX_NEXT_CHARS = 2048


class LoginRefused(BadRequest):
    """A refused login; ``field`` names the form field the message belongs to (None: the
    email and password together, deliberately not one of them)."""

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.field = field


@dataclass(frozen=True, slots=True)
class LoginChoice:
    user_id: int
    team_id: int


@lru_cache(maxsize=1)
def _decoy_hash() -> str:
    """A hash to verify against when there is no user (or no password): the same work as a
    real check, so a response's timing does not tell whether an email has an account."""
    return hash_password("decoy password that matches nothing")


async def _password_matches(password: str, password_hash: str | None) -> bool:
    # argon2 takes tens of milliseconds of CPU on purpose: off the event loop.
    matches = await asyncio.to_thread(verify_password, password, password_hash or _decoy_hash())
    return matches and password_hash is not None


async def _find_user(session: AsyncSession, email: str) -> User | None:
    try:
        return await find_user(session, email)
    except BadRequest:
        return None  # not an address: no account, and the same answer as any wrong email


async def _choose_team(session: AsyncSession, user_id: int, team_slug: str) -> int:
    """The team the session acts in: the one named, else the user's first by membership."""
    query = (
        select(Membership.team_id)
        .join(Team, Team.id == Membership.team_id)
        .where(Membership.user_id == user_id)
        .order_by(Membership.id)
        .limit(1)
    )
    if team_slug.strip():
        query = query.where(Team.slug == normalize_slug(team_slug))
    team_id = await session.scalar(query)
    if team_id is None:
        raise LoginRefused(NO_SUCH_TEAM, "team") if team_slug.strip() else LoginRefused(NO_TEAM)
    return team_id


async def check_login(session: AsyncSession, email: str, password: str, team_slug: str = "") -> LoginChoice:
    """The user and team to start a session for, or ``LoginRefused``."""
    if not email.strip() or not password or len(password) > MAX_PASSWORD_CHARS:
        raise LoginRefused(WRONG_CREDENTIALS)
    user = await _find_user(session, email)
    matches = await _password_matches(password, user.password_hash if user else None)
    if user is None or not matches or not user.is_active:
        raise LoginRefused(WRONG_CREDENTIALS)
    return LoginChoice(user.id, await _choose_team(session, user.id, team_slug))


def safe_next(target: str | None, default: str) -> str:
    """``target`` if it is a path on this site, else ``default``: never a redirect elsewhere.

    Refused: anything not starting with exactly one ``/`` (``//host`` is another site), any
    scheme or host, and backslashes and control characters or spaces anywhere (browsers read
    ``/\\host`` as ``//host`` and drop tabs and newlines, so ``/<tab>/host`` is one too)."""
    if not target or len(target) > MAX_NEXT_CHARS:
        return default
    if not target.startswith("/") or target.startswith("//"):
        return default
    if "\\" in target or any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in target):
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return default
    return target
