"""``chatbots worker`` (the delivery worker as a process of its own) and ``chatbots delivery``
(list, show and retry deliveries of bot-initiated messages)."""

import asyncio
from typing import Annotated

import typer

from app.cli._common import Json, Opt, TeamFilter, command_group, guarded, load_settings, print_json, print_list, run

delivery_app = command_group("Deliveries of bot-initiated messages (trigger_bot).")
COLUMNS = ("id", "team", "status", "platform", "attempts", "updated_at", "last_error")
StatusFilter = Annotated[
    str | None, Opt("--status", help="Only this status: pending, sending, sent, failed or skipped.")
]


def worker() -> None:
    """Run the delivery worker: send bot-initiated messages until SIGTERM or Ctrl-C.

    Sends in flight finish first, then it exits 0. Run as many as you like, anywhere: each
    delivery is claimed by one of them."""
    from app.cli.checks import check_before_start
    from app.observability.logs import configure_logging

    settings = load_settings()
    configure_logging(settings)
    check_before_start(settings)

    async def main() -> None:
        import signal

        from app.runtime import open_runtime
        from app.services.delivery_worker import DeliveryWorker

        async with open_runtime(settings) as runtime:
            if settings.should_auto_migrate:
                from app.migrate import upgrade_database

                await upgrade_database(runtime.engine, settings)
            delivery_worker = DeliveryWorker(runtime)
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, delivery_worker.stop)
            typer.echo(f"delivery worker started (concurrency {settings.delivery_concurrency})", err=True)
            await delivery_worker.run()
            typer.echo("delivery worker stopped", err=True)

    guarded(lambda: asyncio.run(main()))


@delivery_app.command("list")
def list_(team: TeamFilter = None, status: StatusFilter = None, as_json: Json = False) -> None:
    """The newest 100 deliveries."""
    from app.services.deliveries import list_deliveries

    rows = run(lambda s, _: list_deliveries(s, team, status))
    print_list(rows, COLUMNS, as_json)


@delivery_app.command("show")
def show(delivery_id: Annotated[str, typer.Argument(help="The delivery id.")], as_json: Json = False) -> None:
    """One delivery's status."""
    from app.services.deliveries import delivery_status

    data = run(lambda s, _: delivery_status(s, delivery_id))
    _print_one(data, as_json)


@delivery_app.command("retry")
def retry(delivery_id: Annotated[str, typer.Argument(help="The delivery id.")], as_json: Json = False) -> None:
    """Send a failed or skipped delivery again, now, with a fresh set of attempts (its message,
    if already written, is sent as it was)."""
    from app.services.deliveries import retry_delivery

    data = run(lambda s, _: retry_delivery(s, delivery_id))
    _print_one(data, as_json)


def _print_one(data: dict[str, object], as_json: bool) -> None:
    if as_json:
        print_json(data)
        return
    for key, value in data.items():
        typer.echo(f"{key}: {'-' if value is None else value}")
