"""Issuing, storing and revoking OAuth tokens (synchronous: they run inside Authlib's calls,
on the ``Session`` of ``AsyncSession.run_sync``).

Every secret is random (256 bits from ``secrets``) with a recognisable prefix (``cbat_`` access
token, ``cbrt_`` refresh token, ``cbac_`` code) so a leaked one is easy to spot and scan for,
and is stored only as its SHA-256. A grant is a *family*: the first pair and every pair
rotated from it share ``family_id``, and revoking a grant revokes the family, access tokens
included.
"""

import secrets
from datetime import datetime, timedelta

from sqlalchemy import and_, select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.crypto import sha256_hex
from app.models import Membership, OAuthToken, User

ACCESS_TOKEN_PREFIX = "cbat_"
REFRESH_TOKEN_PREFIX = "cbrt_"
CODE_PREFIX = "cbac_"
_T = OAuthToken.__table__


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def new_family_id() -> str:
    return secrets.token_hex(16)


class TokenGenerator:
    """Authlib's token generator (``register_token_generator("default", ...)``): the response
    body. Lifetimes come from the settings, never from Authlib's defaults."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __call__(self, grant_type, client, user=None, scope=None, expires_in=None, include_refresh_token=True):  # type: ignore[no-untyped-def]
        token = {
            "token_type": "Bearer",
            "access_token": new_secret(ACCESS_TOKEN_PREFIX),
            "expires_in": self.settings.oauth_access_token_seconds,
            "scope": scope or "",
        }
        if include_refresh_token:
            token["refresh_token"] = new_secret(REFRESH_TOKEN_PREFIX)
        return token


def store_token(
    db: Session,
    token: dict,  # type: ignore[type-arg]
    *,
    client_id: int,
    user_id: int | None,
    team_id: int,
    family_id: str,
    code_id: int | None,
    settings: Settings,
    now: datetime,
) -> OAuthToken:
    refresh = token.get("refresh_token")
    row = OAuthToken(
        client_id=client_id,
        user_id=user_id,
        team_id=team_id,
        scope=token["scope"],
        access_token_hash=sha256_hex(token["access_token"]),
        refresh_token_hash=sha256_hex(refresh) if refresh else None,
        family_id=family_id,
        authorization_code_id=code_id,
        issued_at=now,
        access_expires_at=now + timedelta(seconds=settings.oauth_access_token_seconds),
        # Sliding: each rotation starts a new lifetime, so it bounds an idle grant.
        refresh_expires_at=now + timedelta(seconds=settings.oauth_refresh_token_seconds) if refresh else None,
    )
    db.add(row)
    db.flush()
    return row


REVOKED = "oauth_tokens_revoked"


def revoke_families(db: Session, where: object, now: datetime) -> None:
    """Revoke every token of the families of the tokens matching ``where``."""
    families = select(_T.c.family_id).where(where).scalar_subquery()
    db.execute(
        update(_T).where(_T.c.family_id.in_(families), _T.c.revoked_at.is_(None)).values(revoked_at=now)
    )
    db.info[REVOKED] = True  # the exchange then forgets the process's remembered tokens


def revoke_family(db: Session, family_id: str, now: datetime) -> None:
    revoke_families(db, _T.c.family_id == family_id, now)


def revoke_code_tokens(db: Session, code_id: int, now: datetime) -> None:
    """A replayed code: the grant it started is compromised (RFC 6749 §4.1.2, RFC 9700 §2.1.1)."""
    revoke_families(db, _T.c.authorization_code_id == code_id, now)


def find_token(db: Session, secret: str, *, refresh: bool) -> OAuthToken | None:
    column = OAuthToken.refresh_token_hash if refresh else OAuthToken.access_token_hash
    return db.scalar(select(OAuthToken).where(column == sha256_hex(secret)))


def is_active_member(db: Session, user_id: int, team_id: int) -> bool:
    """A grant acts for a user within a team only while the user is active and a member."""
    found = db.scalar(
        select(User.id)
        .join(Membership, and_(Membership.user_id == User.id, Membership.team_id == team_id))
        .where(User.id == user_id, User.is_active.is_(True))
    )
    return found is not None
