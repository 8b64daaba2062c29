"""``chatbots oauth-client``: register, list and revoke OAuth clients (SPEC §4.4, §7)."""

from typing import Annotated

import typer

from app.cli._common import Json, Opt, TeamFilter, TeamOpt, command_group, print_done, print_json, print_list, run

oauth_client_app = command_group("OAuth clients (the secret is shown once, stored hashed).")


@oauth_client_app.command("create")
def oauth_client_create(
    team: TeamOpt,
    name: Annotated[str, Opt(help="Shown to users on the consent page.")],
    redirect_uri: Annotated[
        list[str] | None, Opt("--redirect-uri", help="Exact redirect URI (repeat for several).")
    ] = None,
    public: Annotated[
        bool, Opt("--public", help="No secret: a browser or mobile app (PKCE protects its codes).")
    ] = False,
    client_credentials: Annotated[
        bool, Opt("--client-credentials", help="A machine client of the team, no user (needs --chatbot).")
    ] = False,
    chatbot: Annotated[
        list[str] | None, Opt("--chatbot", help="A chatbot (public id) a client-credentials token may reach.")
    ] = None,
    scope: Annotated[list[str] | None, Opt("--scope", help="An allowed scope (repeat; default all).")] = None,
    as_json: Json = False,
) -> None:
    """Register an OAuth client. Its secret (none with --public) is printed once."""
    from app.services.admin_oauth import create_oauth_client

    client, secret = run(lambda s, _: create_oauth_client(
        s, team, name, redirect_uris=redirect_uri, public=public,
        client_credentials=client_credentials, chatbots=chatbot, scopes=scope,
    ))  # fmt: skip
    if as_json:
        print_json({"client_id": client.client_id, "client_secret": secret})
        return
    typer.echo(f"Created OAuth client {client.name!r}: client_id {client.client_id}")
    if secret:
        typer.echo(f"Client secret (shown once, store it now): {secret}")


@oauth_client_app.command("list")
def oauth_client_list(team: TeamFilter = None, as_json: Json = False) -> None:
    """List OAuth clients (never their secrets)."""
    from app.services.admin_oauth import list_oauth_clients

    clients = run(lambda s, _: list_oauth_clients(s, team))
    print_list(clients, ["client_id", "name", "team", "type", "status", "redirect_uris", "created_at"], as_json)


@oauth_client_app.command("revoke")
def oauth_client_revoke(
    client_id: Annotated[str, typer.Argument(help="The client's client_id.")],
    as_json: Json = False,
) -> None:
    """Revoke a client, permanently, and every token it holds."""
    from app.services.admin_oauth import revoke_oauth_client

    client, revoked = run(lambda s, _: revoke_oauth_client(s, client_id))
    data = {"client_id": client.client_id, "revoked_at": client.revoked_at, "revoked_tokens": revoked}
    print_done(as_json, data, f"Revoked OAuth client {client.client_id} and {revoked} token(s).")
