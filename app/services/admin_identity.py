"""Administration of tenancy and identity: teams, users, memberships and API keys (SPEC §2, §4.2).

Functions flush but never commit: the caller (the CLI, the demo bootstrap, a test) owns the
transaction, so a failed command writes nothing.
"""

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.api_keys import generate_api_key
from app.auth.passwords import hash_password
from app.db import utcnow
from app.errors import BadRequest, NotFound
from app.models import ApiKey, Membership, Role, Team, User, WebSession

T = TypeVar("T")

_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]*")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
MIN_PASSWORD_LENGTH = 8
# Beyond ~100 years a key is effectively immortal; the cap keeps datetimes in range.
MAX_EXPIRES_DAYS = 36_500


# --- shared helpers (also used by app.services.admin_chatbots) -------------------------------


def require_text(value: str | None, what: str, max_length: int) -> str:
    stripped = (value or "").strip()
    if not stripped:
        raise BadRequest(f"{what} may not be blank.")
    if len(stripped) > max_length:
        raise BadRequest(f"{what} is longer than {max_length} characters.")
    return stripped


async def add_unique(session: AsyncSession, row: T, conflict: str) -> T:
    """Insert ``row`` in a savepoint; losing a race on a unique constraint is a BadRequest."""
    try:
        async with session.begin_nested():
            session.add(row)
    except IntegrityError:
        raise BadRequest(conflict) from None
    return row


def normalize_slug(slug: str) -> str:
    return (slug or "").strip().lower()


async def get_team(session: AsyncSession, slug: str) -> Team:
    team = await session.scalar(select(Team).where(Team.slug == normalize_slug(slug)))
    if team is None:
        raise NotFound(f"No team with slug {slug!r}.")
    return team


async def for_team(session: AsyncSession, query: Any, team_id: Any, team_slug: str | None) -> Any:
    """``query`` limited to the team with this slug (404 if there is none); without a slug,
    unchanged. ``team_id`` is the query's team column."""
    if team_slug is None:
        return query
    return query.where(team_id == (await get_team(session, team_slug)).id)


async def team_slugs(session: AsyncSession) -> dict[int, str]:
    return dict((await session.execute(select(Team.id, Team.slug))).all())


# --- teams -----------------------------------------------------------------------------------


async def create_team(session: AsyncSession, slug: str, name: str) -> Team:
    slug = normalize_slug(slug)
    if not _SLUG.fullmatch(slug) or len(slug) > 100:
        raise BadRequest(
            f"Invalid team slug {slug!r}: use 1-100 lower-case letters, digits, '-' or '_', "
            "starting with a letter or digit."
        )
    name = require_text(name, "Team name", 200)
    conflict = f"A team with slug {slug!r} already exists."
    if await session.scalar(select(Team.id).where(Team.slug == slug)) is not None:
        raise BadRequest(conflict)
    return await add_unique(session, Team(slug=slug, name=name), conflict)


async def list_teams(session: AsyncSession) -> list[Team]:
    return list(await session.scalars(select(Team).order_by(Team.slug)))


# --- users and memberships -------------------------------------------------------------------


def normalize_email(email: str) -> str:
    """Emails are unique case-insensitively: always stored stripped and lower-cased."""
    normalized = (email or "").strip().lower()
    if not _EMAIL.fullmatch(normalized) or len(normalized) > 320:
        raise BadRequest(f"Invalid email address {email!r}.")
    return normalized


def parse_role(role: str | Role) -> Role:
    try:
        return Role((role or "").strip().lower())
    except ValueError:
        choices = ", ".join(r.value for r in Role)
        raise BadRequest(f"Unknown role {role!r}: choose one of {choices}.") from None


async def find_user(session: AsyncSession, email: str) -> User | None:
    return await session.scalar(select(User).where(User.email == normalize_email(email)))


async def get_user(session: AsyncSession, email: str) -> User:
    user = await find_user(session, email)
    if user is None:
        raise NotFound(f"No user with email {normalize_email(email)!r}.")
    return user


async def find_membership(session: AsyncSession, team: Team, user: User) -> Membership | None:
    return await session.scalar(
        select(Membership).where(Membership.team_id == team.id, Membership.user_id == user.id)
    )


@dataclass(frozen=True)
class MemberAdded:
    user: User
    team: Team
    membership: Membership
    user_created: bool  # False: an existing user joined another team


async def create_user(
    session: AsyncSession,
    email: str,
    team_slug: str,
    role: str | Role,
    password: str | None = None,
) -> MemberAdded:
    """Create a user and make them a member of a team; for an existing user, only the membership."""
    email = normalize_email(email)
    parsed_role = parse_role(role)
    if password is not None:
        require_password(password)
    team = await get_team(session, team_slug)
    user = await find_user(session, email)
    user_created = user is None
    if user is None:
        user = User(email=email, password_hash=hash_password(password) if password else None)
        await add_unique(session, user, f"A user with email {email!r} already exists.")
    elif password is not None:
        raise BadRequest(
            f"User {email!r} already exists; adding them to a team does not set their password. "
            "Leave out the password."
        )
    conflict = f"{email} is already a member of team {team.slug!r}."
    if await find_membership(session, team, user) is not None:
        raise BadRequest(conflict)
    membership = Membership(team_id=team.id, user_id=user.id, role=parsed_role)
    await add_unique(session, membership, conflict)
    return MemberAdded(user=user, team=team, membership=membership, user_created=user_created)


async def set_user_active(session: AsyncSession, email: str, active: bool) -> User:
    """An inactive user's credentials stop working at once (SPEC §4: 401 "User inactive")."""
    user = await get_user(session, email)
    user.is_active = active
    await session.flush()
    return user


def require_password(password: str) -> None:
    if not password:
        raise BadRequest("The password may not be empty.")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise BadRequest(f"The password must have at least {MIN_PASSWORD_LENGTH} characters.")


async def set_password(session: AsyncSession, email: str, password: str) -> tuple[User, int]:
    """Set a user's web login password and end their browser sessions (a new password is how
    an operator shuts out whoever knew the old one); returns the user and how many ended."""
    require_password(password)
    user = await get_user(session, email)
    user.password_hash = hash_password(password)
    ended = await session.execute(delete(WebSession).where(WebSession.user_id == user.id))
    await session.flush()
    return user, ended.rowcount or 0


async def remove_member(session: AsyncSession, email: str, team_slug: str) -> int:
    """Remove a membership and revoke the user's API keys of that team; returns how many.

    Revoking (rather than relying on the membership check alone) keeps old keys dead if the
    user is ever added back.
    """
    team = await get_team(session, team_slug)
    user = await get_user(session, email)
    membership = await find_membership(session, team, user)
    if membership is None:
        raise NotFound(f"{user.email} is not a member of team {team.slug!r}.")
    await session.delete(membership)
    revoked = await session.execute(
        update(ApiKey)
        .where(ApiKey.team_id == team.id, ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    await session.flush()
    return revoked.rowcount or 0


# --- API keys --------------------------------------------------------------------------------


async def create_api_key(
    session: AsyncSession,
    email: str,
    team_slug: str,
    name: str,
    write: bool = False,
    expires_days: int | None = None,
) -> tuple[ApiKey, str]:
    """A new key for a member of a team: the row and the raw key (shown once, stored hashed).

    Keys are read-only unless ``write`` (SPEC §4.2: read_only defaults to true).
    """
    name = require_text(name, "Key name", 200)
    if expires_days is not None and not 1 <= expires_days <= MAX_EXPIRES_DAYS:
        raise BadRequest(f"Expiry must be between 1 and {MAX_EXPIRES_DAYS} days.")
    team = await get_team(session, team_slug)
    user = await get_user(session, email)
    if await find_membership(session, team, user) is None:
        raise BadRequest(f"{user.email} is not a member of team {team.slug!r}.")
    if not user.is_active:
        raise BadRequest(f"User {user.email!r} is inactive; activate them first.")
    generated = generate_api_key()
    key = ApiKey(
        team_id=team.id,
        user_id=user.id,
        name=name,
        prefix=generated.prefix,
        key_hash=generated.key_hash,
        read_only=not write,
        expires_at=utcnow() + timedelta(days=expires_days) if expires_days else None,
    )
    await add_unique(session, key, "Key prefix collision; please try again.")
    return key, generated.key


@dataclass(frozen=True)
class ApiKeySummary:
    """What may be shown about a key: never the key or its hash."""

    prefix: str
    name: str
    team: str
    email: str
    read_only: bool
    status: str  # active | expired | revoked
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


async def list_api_keys(session: AsyncSession, team_slug: str | None = None) -> list[ApiKeySummary]:
    query = (
        select(ApiKey, Team.slug, User.email)
        .join(Team, Team.id == ApiKey.team_id)
        .join(User, User.id == ApiKey.user_id)
        .order_by(Team.slug, ApiKey.created_at, ApiKey.id)
    )
    query = await for_team(session, query, ApiKey.team_id, team_slug)
    now = utcnow()
    summaries = []
    for key, slug, email in (await session.execute(query)):
        if key.revoked_at is not None:
            status = "revoked"
        elif key.expires_at is not None and key.expires_at <= now:
            status = "expired"
        else:
            status = "active"
        summaries.append(
            ApiKeySummary(
                prefix=key.prefix,
                name=key.name,
                team=slug,
                email=email,
                read_only=key.read_only,
                status=status,
                created_at=key.created_at,
                last_used_at=key.last_used_at,
                expires_at=key.expires_at,
                revoked_at=key.revoked_at,
            )
        )
    return summaries


async def revoke_api_key(session: AsyncSession, prefix: str) -> ApiKey:
    """Permanent. Revoking an already revoked key keeps its first revocation time."""
    # Accept the whole key too: operators paste what they have.
    prefix = (prefix or "").strip().partition(".")[0]
    key = await session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if key is None:
        raise NotFound(f"No API key with prefix {prefix!r}.")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        await session.flush()
    return key
