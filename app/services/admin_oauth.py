"""Administration of OAuth clients (SPEC §4.4, §7): register, list, revoke.

A client belongs to a team. It is either a redirect client (a web or mobile app, or a back end:
the authorization code flow with PKCE; ``public`` ones have no secret) or a team machine
(``client_credentials``: confidential, acting for its team on the chatbots it lists). The
secret is returned once and stored as its SHA-256. Revoking a client revokes every token it
holds. Like the other admin services, functions flush and the caller commits.
"""

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.scopes import INTERACT_SCOPE, SCOPES
from app.crypto import sha256_hex
from app.db import utcnow
from app.errors import BadRequest, NotFound
from app.models import Chatbot, OAuthClient, OAuthToken, Team
from app.services.admin_identity import add_unique, for_team, get_team, require_text

CLIENT_ID_PREFIX = "cbc_"
CLIENT_SECRET_PREFIX = "cbcs_"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
CODE_GRANTS = ["authorization_code", "refresh_token"]
MACHINE_GRANTS = ["client_credentials"]
DOCS_REDIRECT_PATH = "/docs/oauth2-redirect"  # Swagger UI's page (app.routers.docs)


def check_redirect_uri(uri: str) -> str:
    """An absolute https URI without a fragment (RFC 6749 §3.1.2); plain http only to a
    loopback host (a native app or local development, RFC 8252 §7.3)."""
    parts = urlsplit(uri)
    if parts.fragment or not parts.hostname:
        raise BadRequest(f"Redirect URI {uri!r} must be absolute and have no fragment.")
    if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS):
        raise BadRequest(f"Redirect URI {uri!r} must use https (http only for localhost).")
    return uri


def check_scopes(scopes: list[str] | None) -> list[str]:
    if not scopes:
        return list(SCOPES)
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise BadRequest(f"Unknown scope(s): {', '.join(unknown)}. Known: {', '.join(SCOPES)}.")
    return list(dict.fromkeys(scopes))


async def _chatbot_ids(session: AsyncSession, team: Team, public_ids: list[str]) -> list[int]:
    ids = []
    for public_id in public_ids:
        try:
            parsed = uuid.UUID(public_id)
        except ValueError:
            raise BadRequest(f"{public_id!r} is not a chatbot id (a UUID).") from None
        found = await session.scalar(
            select(Chatbot.id).where(Chatbot.public_id == parsed, Chatbot.team_id == team.id,
                                     Chatbot.working_version_id.is_(None), Chatbot.is_archived.is_(False))
        )  # fmt: skip
        if found is None:
            raise NotFound(f"No chatbot {public_id} in team {team.slug!r}.")
        ids.append(found)
    return ids


async def create_oauth_client(
    session: AsyncSession,
    team_slug: str,
    name: str,
    *,
    redirect_uris: list[str] | None = None,
    public: bool = False,
    client_credentials: bool = False,
    chatbots: list[str] | None = None,
    scopes: list[str] | None = None,
) -> tuple[OAuthClient, str | None]:
    """The new client and its secret (None for a public client)."""
    name = require_text(name, "Client name", 200)
    team = await get_team(session, team_slug)
    if client_credentials:
        if public or redirect_uris:
            raise BadRequest("A client-credentials client is confidential and has no redirect URIs.")
        if not chatbots:
            raise BadRequest("A client-credentials client needs at least one --chatbot.")
        chatbot_ids, uris, grant_types = await _chatbot_ids(session, team, chatbots), [], MACHINE_GRANTS
    else:
        if not redirect_uris:
            raise BadRequest("Give at least one --redirect-uri, or --client-credentials.")
        if chatbots:
            raise BadRequest("--chatbot is for client-credentials clients only.")
        chatbot_ids, grant_types = [], CODE_GRANTS
        uris = list(dict.fromkeys(check_redirect_uri(u) for u in redirect_uris))
    secret = None if public else CLIENT_SECRET_PREFIX + secrets.token_urlsafe(32)
    client = OAuthClient(
        client_id=CLIENT_ID_PREFIX + secrets.token_urlsafe(18),
        client_secret_hash=sha256_hex(secret) if secret else None,
        name=name,
        team_id=team.id,
        redirect_uris=uris,
        grant_types=list(grant_types),
        scopes=check_scopes(scopes),
        chatbot_ids=chatbot_ids,
    )
    await add_unique(session, client, "Client id collision; please try again.")
    return client, secret


async def ensure_docs_client(session: AsyncSession, team_slug: str, base_urls: list[str], client_id: str) -> OAuthClient:
    """The public client that /docs' Authorize button uses (SPEC §4.4: the code flow with PKCE
    from Swagger UI), under a fixed ``client_id`` the page can name; owned by ``team_slug``
    (the consent page then shows that team) and allowed ``chatbots:interact`` only. Each base
    URL the service is reached at adds its ``<base>/docs/oauth2-redirect`` redirect URI (exact
    matching: ``http://127.0.0.1:8000`` and ``http://localhost:8000`` are two); none is ever
    removed, and a revoked client stays revoked."""
    uris = [check_redirect_uri(base.rstrip("/") + DOCS_REDIRECT_PATH) for base in base_urls]
    client = await session.scalar(select(OAuthClient).where(OAuthClient.client_id == client_id))
    if client is None:
        team = await get_team(session, team_slug)
        client = OAuthClient(
            client_id=client_id, client_secret_hash=None, name="API docs (/docs)", team_id=team.id,
            redirect_uris=uris, grant_types=list(CODE_GRANTS), scopes=[INTERACT_SCOPE], chatbot_ids=[],
        )  # fmt: skip
        await add_unique(session, client, "The /docs client was registered concurrently; please try again.")
        return client
    merged = list(dict.fromkeys([*client.redirect_uris, *uris]))
    if merged != client.redirect_uris:
        client.redirect_uris = merged
        await session.flush()
    return client


@dataclass(frozen=True)
class OAuthClientSummary:
    client_id: str
    name: str
    team: str
    type: str  # public | confidential | client_credentials
    redirect_uris: list[str]
    scopes: list[str]
    status: str  # active | revoked
    created_at: datetime


async def list_oauth_clients(session: AsyncSession, team_slug: str | None = None) -> list[OAuthClientSummary]:
    query = select(OAuthClient, Team.slug).join(Team, Team.id == OAuthClient.team_id).order_by(Team.slug, OAuthClient.id)
    query = await for_team(session, query, OAuthClient.team_id, team_slug)
    summaries = []
    for client, slug in await session.execute(query):
        kind = ("client_credentials" if "client_credentials" in client.grant_types
                else "public" if client.client_secret_hash is None else "confidential")  # fmt: skip
        summaries.append(OAuthClientSummary(
            client.client_id, client.name, slug, kind, list(client.redirect_uris), list(client.scopes),
            "revoked" if client.revoked_at else "active", client.created_at,
        ))  # fmt: skip
    return summaries


async def revoke_oauth_client(session: AsyncSession, client_id: str) -> tuple[OAuthClient, int]:
    """Permanent: the client can no longer authenticate, and every token it holds is revoked.
    Returns the client and how many tokens were revoked now."""
    client = await session.scalar(select(OAuthClient).where(OAuthClient.client_id == client_id.strip()))
    if client is None:
        raise NotFound(f"No OAuth client {client_id!r}.")
    now = utcnow()
    if client.revoked_at is None:
        client.revoked_at = now
    result = await session.execute(
        update(OAuthToken).where(OAuthToken.client_id == client.id, OAuthToken.revoked_at.is_(None)).values(revoked_at=now)
    )
    await session.flush()
    return client, result.rowcount
