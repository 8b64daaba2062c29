"""Browser sessions (the ``sessionid`` cookie, ``cookieAuth``; SPEC §4.5).

A browser sends its cookies with every request to this site, including the ones another site
makes it send: so an unsafe request authenticated by the cookie must also pass the CSRF check
(``X-CSRFToken`` equal to the ``csrftoken`` cookie), which only a page of this site can do.
The session is checked first: a stale cookie is a 401 whatever its CSRF header, and the CSRF
failure (403) is only ever about a session that would otherwise have been let in.
"""

from app.auth.csrf import CSRF_COOKIE, CSRF_HEADER, csrf_failure
from app.auth.principal import CredentialContext, Principal
from app.auth.scopes import ALL_SCOPES
from app.auth.web_sessions import find_session
from app.db import utcnow
from app.errors import NotAuthenticated, PermissionDenied
from app.stores.base import TurnStore


async def resolve(store: TurnStore, raw: str, context: CredentialContext) -> Principal | None:
    """The session's principal; None for an unknown or expired session. Raises 401 with the
    SPEC's messages for an inactive user or a removed member, 403 ``CSRF Failed: ...``."""
    session = await find_session(store, raw, utcnow())
    if session is None:
        return None
    if not session.is_active:
        raise NotAuthenticated("User inactive or deleted.")
    if session.role is None:
        raise NotAuthenticated("Incorrect authentication credentials.")
    failure = csrf_failure(
        context.method, context.cookies.get(CSRF_COOKIE), context.headers.get(CSRF_HEADER)
    )
    if failure is not None:
        raise PermissionDenied(failure)
    return Principal(
        kind="session",
        credential_id=f"session:{session.id}",
        team_id=session.team_id,
        scopes=ALL_SCOPES,
        user_id=session.user_id,
        user_email=session.email,
        role=session.role,
    )
