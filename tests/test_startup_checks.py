"""``chatbots serve`` (and ``chatbots worker``) refuse to start, with one line on stderr, exit
code 1 and no traceback, when: no secret key outside the embedded default; the database does
not answer; its schema is behind this version's migrations and nothing migrates it. Real
processes. The schema check runs on a SQLite file of its own whatever the suite's database:
the check is the same on both, and a PostgreSQL database left behind would need a server-wide
database of its own per run."""

import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory

from app.migrate import alembic_config
from tests.server import free_port, serve

ROOT = Path(__file__).parent.parent


def start_and_fail(tmp_path: Path, command_line: str, settings: dict[str, str]) -> list[str]:
    """Run ``chatbots serve`` or ``chatbots worker``; it must exit 1 at once: its output lines."""
    if command_line == "serve":
        proc = serve(tmp_path, free_port(), settings=settings)
    else:
        import os

        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATBOTS_")}
        env |= {f"CHATBOTS_{k.upper()}": v for k, v in settings.items()} | {"PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, output
    assert "Traceback" not in output, output
    return [line for line in output.splitlines() if line.strip()]


@pytest.mark.parametrize("command_line", ["serve", "worker"])
def test_no_secret_key_outside_the_embedded_default_refuses_to_start(tmp_path, command_line):
    lines = start_and_fail(tmp_path, command_line, {"database_url": "postgresql+asyncpg://postgres@127.0.0.1:1/x"})
    assert lines == ["Error: CHATBOTS_SECRET_KEY must be set when the database is not the embedded SQLite default."]


def test_a_database_that_does_not_answer_refuses_to_start(tmp_path):
    port = free_port()  # nothing listens there
    url = f"postgresql+asyncpg://postgres:pw-not-shown@127.0.0.1:{port}/chatbots"
    [line] = start_and_fail(tmp_path, "serve", {"database_url": url, "secret_key": "k"})
    assert line.startswith(f"Error: cannot reach the database at postgresql+asyncpg://postgres:***@127.0.0.1:{port}/chatbots: ")
    assert "pw-not-shown" not in line


def test_a_schema_behind_the_code_refuses_to_start_unless_it_migrates(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path}/behind.db"
    config = alembic_config(url)
    head = ScriptDirectory.from_config(config).get_revision("head")
    command.upgrade(config, head.down_revision)  # one migration short
    [line] = start_and_fail(tmp_path, "serve", {"database_url": url, "auto_migrate": "false"})
    assert line == (
        f"Error: the database at {url} is at migration {head.down_revision}, this version needs "
        f"{head.revision}: run `chatbots db upgrade` (or set CHATBOTS_AUTO_MIGRATE=true)"
    )


def test_a_database_never_migrated_refuses_to_start_unless_it_migrates(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path}/empty.db"
    [line] = start_and_fail(tmp_path, "serve", {"database_url": url, "auto_migrate": "false"})
    assert line == f"Error: the database at {url} has no schema yet: run `chatbots db upgrade` (or set CHATBOTS_AUTO_MIGRATE=true)"
