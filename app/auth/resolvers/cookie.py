"""Browser sessions (the ``sessionid`` cookie, ``cookieAuth``; SPEC §4.5).

A browser sends its cookies with every request to this site, including the ones another site
makes it send: so an unsafe request authenticated by the cookie must also pass the CSRF check
(``X-CSRFToken`` equal to the ``csrftoken`` cookie), which only a page of this site can do.
The session is checked first: a stale cookie is a 401 whatever its CSRF header, and the CSRF
failure (403) is only ever about a session that would otherwise have been let in.
"""

from app.auth.csrf import CSRF_COOKIE, CSRF_HEADER, csrf_failure
from app.auth.principal import CredentialContext, Principal
from app.auth.resolvers import remembered, user_principal
from app.auth.web_sessions import BrowserSession, cache_key, find_session
from app.db import utcnow
from app.errors import PermissionDenied
from app.stores.base import TurnStore


async def resolve(store: TurnStore, raw: str, context: CredentialContext) -> Principal | None:
    """The session's principal; None for an unknown or expired session. Raises 401 with the
    SPEC's messages for an inactive user or a removed member, 403 ``CSRF Failed: ...``."""
    now = utcnow()

    async def lookup() -> BrowserSession | None:
        return await find_session(store, raw, now)

    session = await remembered(context, cache_key(raw), lookup)
    if session is None or session.expires_at <= now:  # a remembered one may have expired since
        return None
    principal = user_principal(
        "session", f"session:{session.id}", team_id=session.team_id, user_id=session.user_id,
        email=session.email, is_active=session.is_active, role=session.role,
    )  # fmt: skip
    failure = csrf_failure(context.method, context.cookies.get(CSRF_COOKIE), context.headers.get(CSRF_HEADER))
    if failure is not None:
        raise PermissionDenied(failure)
    return principal
