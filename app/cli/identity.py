"""Who may use the service: ``team``, ``user`` and ``apikey`` commands."""

from typing import Annotated

import typer

from app.cli._common import (
    FROM_STDIN,
    Json,
    Opt,
    TeamFilter,
    TeamOpt,
    command_group,
    print_done,
    print_json,
    print_list,
    read_secret_line,
    read_secret,
    run,
)

team_app = command_group("Teams (tenants).")
user_app = command_group("Users and their team memberships.")
apikey_app = command_group("API keys (shown once at creation, stored hashed).")

EmailOpt = Annotated[str, Opt(help="The user's email.")]


# --- teams -------------------------------------------------------------------------------------


@team_app.command("create")
def team_create(
    slug: Annotated[str, Opt(help="Unique short name: lower-case letters, digits, - and _.")],
    name: Annotated[str, Opt(help="Display name.")],
    as_json: Json = False,
) -> None:
    """Create a team."""
    from app.services.admin import create_team

    team = run(lambda s, _: create_team(s, slug, name))
    data = {"id": team.id, "slug": team.slug, "name": team.name}
    print_done(as_json, data, f"Created team {team.slug!r} (id {team.id}).")


@team_app.command("list")
def team_list(as_json: Json = False) -> None:
    """List teams."""
    from app.services.admin import list_teams

    teams = run(lambda s, _: list_teams(s))
    rows = [{"id": t.id, "slug": t.slug, "name": t.name, "created_at": t.created_at} for t in teams]
    print_list(rows, ["id", "slug", "name", "created_at"], as_json)


# --- users -------------------------------------------------------------------------------------


@user_app.command("create")
def user_create(
    email: Annotated[str, Opt(help="Email (stored lower-cased).")],
    team: TeamOpt,
    role: Annotated[str, Opt(help="admin, chatbot_admin or member.")],
    password: Annotated[
        str | None, Opt(help=f"Web login password (new users only). {FROM_STDIN}")
    ] = None,
    as_json: Json = False,
) -> None:
    """Create a user in a team; an existing user is only added to the team."""
    from app.services.admin import create_user

    password = read_secret(password)
    added = run(lambda s, _: create_user(s, email, team, role, password))
    user, membership = added.user, added.membership
    data = {
        "id": user.id, "email": user.email, "team": added.team.slug, "role": membership.role,
        "user_created": added.user_created,
    }  # fmt: skip
    what = "Created user {} in" if added.user_created else "Added existing user {} to"
    message = f"{what.format(user.email)} team {added.team.slug!r} as {membership.role}."
    print_done(as_json, data, message)


def _set_active(email: str, active: bool, as_json: bool) -> None:
    from app.services.admin import set_user_active

    user = run(lambda s, _: set_user_active(s, email, active))
    state = "active" if active else "inactive"
    data = {"email": user.email, "is_active": user.is_active}
    print_done(as_json, data, f"{user.email} is {state}.")


@user_app.command("deactivate")
def user_deactivate(email: EmailOpt, as_json: Json = False) -> None:
    """Deactivate a user: all their credentials stop working."""
    _set_active(email, False, as_json)


@user_app.command("activate")
def user_activate(email: EmailOpt, as_json: Json = False) -> None:
    """Activate a user again."""
    _set_active(email, True, as_json)


@user_app.command("set-password")
def user_set_password(email: EmailOpt, as_json: Json = False) -> None:
    """Set a user's web login password, read from standard input (one line; at least 8
    characters). Ends the user's browser sessions. Nothing secret is printed."""
    from app.services.admin import set_password

    password = read_secret_line("Password: ")
    user, ended = run(lambda s, _: set_password(s, email, password))
    data = {"email": user.email, "password_set": True, "sessions_ended": ended}
    print_done(as_json, data, f"Password set for {user.email}; ended {ended} browser session(s).")


@user_app.command("remove")
def user_remove(email: EmailOpt, team: TeamOpt, as_json: Json = False) -> None:
    """Remove a user from a team (and revoke their API keys of that team)."""
    from app.services.admin import normalize_email, remove_member

    revoked = run(lambda s, _: remove_member(s, email, team))
    data = {"email": normalize_email(email), "team": team, "revoked_api_keys": revoked}
    print_done(as_json, data, f"Removed {email} from team {team!r}; revoked {revoked} API key(s).")


# --- API keys ----------------------------------------------------------------------------------


@apikey_app.command("create")
def apikey_create(
    email: Annotated[str, Opt(help="The key's user (a member of the team).")],
    team: TeamOpt,
    name: Annotated[str, Opt(help="What the key is for.")],
    write: Annotated[bool, Opt("--write", help="Allow POST requests (default read-only).")] = False,
    expires_days: Annotated[int | None, Opt(help="Expire after this many days.")] = None,
    as_json: Json = False,
) -> None:
    """Create an API key. The key is printed once; only its hash is stored."""
    from app.services.admin import create_api_key

    key, raw = run(lambda s, _: create_api_key(s, email, team, name, write, expires_days))
    if as_json:
        data = {"key": raw, "prefix": key.prefix, "read_only": key.read_only}
        print_json(data | {"expires_at": key.expires_at})
        return
    access = "read-only" if key.read_only else "read-write"
    expiry = f", expires {key.expires_at:%Y-%m-%d %H:%M} UTC" if key.expires_at else ""
    typer.echo(f"Created {access} API key {key.prefix!r} ({name}{expiry}).")
    typer.echo(f"Key (shown once, store it now): {raw}")


@apikey_app.command("list")
def apikey_list(team: TeamFilter = None, as_json: Json = False) -> None:
    """List API keys (never the keys themselves)."""
    from app.services.admin import list_api_keys

    keys = run(lambda s, _: list_api_keys(s, team))
    columns = ["prefix", "name", "team", "email", "read_only", "status", "expires_at"]
    print_list(keys, [*columns, "last_used_at"], as_json)


@apikey_app.command("revoke")
def apikey_revoke(
    prefix: Annotated[str, typer.Argument(help="The key's prefix (the part before the dot).")],
    as_json: Json = False,
) -> None:
    """Revoke an API key, permanently."""
    from app.services.admin import revoke_api_key

    key = run(lambda s, _: revoke_api_key(s, prefix))
    data = {"prefix": key.prefix, "revoked_at": key.revoked_at}
    print_done(as_json, data, f"Revoked API key {key.prefix!r}.")
