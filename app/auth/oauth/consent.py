"""The authorization endpoint's decisions (SPEC §4.4), below its page: validate the request
with Authlib, describe what the user is asked to grant, and grant or deny it.

Runs inside ``run_oauth`` (synchronous). The user is the logged-in browser's; the team is chosen
among the user's teams, or fixed by a team-owned client (and the user must be a member of it).
"""

from dataclasses import dataclass

from authlib.oauth2.rfc6749.errors import OAuth2Error
from authlib.oauth2.rfc6749.util import scope_to_list
from sqlalchemy import select

from app.auth.oauth.records import Client, GrantOwner
from app.auth.oauth.server import FormRequest, OAuthAnswer, OAuthServer
from app.auth.scopes import SCOPES
from app.models import Membership, Team

NOT_A_MEMBER = "You are not a member of the team this application belongs to."


@dataclass(frozen=True, slots=True)
class TeamChoice:
    id: int
    slug: str
    name: str


@dataclass(frozen=True, slots=True)
class ConsentPage:
    client_name: str
    scopes: list[tuple[str, str]]  # (name, description)
    teams: list[TeamChoice]


@dataclass(frozen=True, slots=True)
class Refused:
    """The request cannot be answered by a redirect (no valid client or redirect URI): a page."""

    status: int
    message: str


Outcome = ConsentPage | OAuthAnswer | Refused


def _teams(server: OAuthServer, client: Client, user_id: int) -> list[TeamChoice]:
    query = (
        select(Team.id, Team.slug, Team.name)
        .join(Membership, Membership.team_id == Team.id)
        .where(Membership.user_id == user_id)
        .order_by(Team.name, Team.id)
    )
    if client.row.team_id is not None:
        query = query.where(Team.id == client.row.team_id)
    return [TeamChoice(*row) for row in server.db.execute(query)]


def _validated(server: OAuthServer, request: FormRequest) -> object:
    """Authlib's grant for the request, or the error answer: a redirect to the client when the
    redirect URI is known good, else a page (never a redirect to an unchecked URI)."""
    try:
        return server.get_consent_grant(request)
    except OAuth2Error as error:
        if error.redirect_uri:
            return server.handle_error_response(request, error)
        return Refused(400, error.get_error_description() or error.error or "Invalid request.")


def consent_page(server: OAuthServer, request: FormRequest, user_id: int) -> Outcome:
    grant = _validated(server, request)
    if isinstance(grant, OAuthAnswer | Refused):
        return grant
    client: Client = request.client
    teams = _teams(server, client, user_id)
    if not teams:
        return Refused(403, NOT_A_MEMBER)
    scopes = [(name, SCOPES[name]) for name in scope_to_list(request.scope or "")]
    return ConsentPage(client.row.name, scopes, teams)


def decide(server: OAuthServer, request: FormRequest, user_id: int, approve: bool, team_id: str | None) -> Outcome:
    grant = _validated(server, request)
    if isinstance(grant, OAuthAnswer | Refused):
        return grant
    owner = None
    if approve:
        teams = {str(t.id): t for t in _teams(server, request.client, user_id)}
        if team_id not in teams:
            return Refused(400, "Choose one of your teams.")
        owner = GrantOwner(user_id, teams[team_id].id)
    return server.create_authorization_response(request, grant_user=owner, grant=grant)
