"""The ``chatbots`` command: run the service and administer teams, users, keys, chatbots, channels.

Each invocation reads fresh ``Settings``, opens its own engine, runs one service call in one
transaction (committed on success) and disposes the engine. Domain errors print a message on
stderr and exit 1. ``--json`` prints exactly one JSON document on stdout.

Start-up stays fast: the database layer, the services and uvicorn are imported inside the
commands, never at module import (litellm is never imported here).

The commands live in ``serve`` (serve, db, demo), ``identity`` (team, user, apikey), ``bots``
(provider, chatbot, channel), ``delivery`` (worker, delivery), ``oauth_clients`` (oauth-client) and
``secret_keys`` (secrets); ``_common`` holds what they share. The tree is assembled here.
"""

import typer

from app.cli import bots, delivery, identity, oauth_clients, secret_keys, serve

app = typer.Typer(
    name="chatbots",
    help="Chatbots API: run the service and administer it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command()(serve.serve)
app.command()(serve.demo)
app.command()(delivery.worker)
app.add_typer(serve.db_app, name="db")
app.add_typer(identity.team_app, name="team")
app.add_typer(identity.user_app, name="user")
app.add_typer(identity.apikey_app, name="apikey")
app.add_typer(bots.provider_app, name="provider")
app.add_typer(bots.chatbot_app, name="chatbot")
app.add_typer(bots.channel_app, name="channel")
app.add_typer(delivery.delivery_app, name="delivery")
app.add_typer(oauth_clients.oauth_client_app, name="oauth-client")
app.add_typer(secret_keys.secrets_app, name="secrets")


def main() -> None:
    app(prog_name="chatbots")
