"""``chatbots secrets``: the secrets stored encrypted (provider keys, channel tokens) and the key
they are encrypted under (README "Key rotation")."""

import typer

from app.cli._common import Json, command_group, fail, load_settings, print_json, run

secrets_app = command_group("Secrets stored encrypted: provider keys and channel tokens.")


@secrets_app.command("rotate")
def rotate(as_json: Json = False) -> None:
    """Re-encrypt every stored secret under the current CHATBOTS_SECRET_KEY.

    Values under a key of CHATBOTS_SECRET_KEY_FALLBACKS (or the derivation of releases before
    HKDF) are written again under the current key; values already under it are left alone, so
    running it twice is harmless. Safe while the service runs (batches of rows, each in its own
    short transaction). Afterwards the fallbacks can be removed.

    A value that no key opens is named and left as it is, and the command exits 1.
    """
    from app.services.secrets_rotation import rotate_secrets

    settings = load_settings()
    try:
        keys = settings.encryption_keys
    except RuntimeError as exc:
        fail(str(exc))
    report = run(lambda session, _: rotate_secrets(session, keys), settings)
    if as_json:
        print_json(report)
    else:
        for table, counts in report.tables.items():
            typer.echo(
                f"{table}: {counts.rows} rows; {counts.rotated} values re-encrypted, "
                f"{counts.current} already under the current key, {counts.unreadable} unreadable"
            )
        for value in report.unreadable:
            typer.echo(f"unreadable: {value.table} {value.id} {value.field}")
    if report.unreadable:
        fail(
            f"{len(report.unreadable)} stored value(s) could not be decrypted with "
            "CHATBOTS_SECRET_KEY or any of CHATBOTS_SECRET_KEY_FALLBACKS and were left as they "
            "are: add the key they were written under to the fallbacks and run this again."
        )
