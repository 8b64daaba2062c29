"""The image's start command and compose's topology, run as plain processes (no Docker engine
runs here). Command lines and environments are read from the Dockerfile and compose.yaml
themselves (tests/deployment_files.py), so what runs is what a container would run, but for
three things: the image's venv is this test run's, the port is a free one (8000 may be taken on
a shared machine), and compose's `postgres` and `redis` hosts are this suite's database server
and a local redis-server."""

import asyncio
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.deployment_files import (
    compose,
    healthcheck_command,
    image_command,
    image_environment,
    interpolate,
    on_port,
)
from tests.own_database import own_database
from tests.server import free_port, wait_until_healthy

STARTUP_SECONDS = 60  # two cores shared with other work: a cold start may take a while
# What an operator's .env holds: compose fills the ${...} of compose.yaml from it.
DOT_ENV = {"POSTGRES_PASSWORD": "unused-here", "CHATBOTS_SECRET_KEY": "test-secret-key"}


def _executable(argv: list[str], env: dict[str, str]) -> list[str]:
    """``argv`` with its first word looked up on ``env``'s PATH, as the container would."""
    found = shutil.which(argv[0], path=env["PATH"])
    assert found, f"{argv[0]} is not on the image's PATH"
    return [found, *argv[1:]]


def start(argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """A process with exactly ``env`` (nothing inherited), its output in ``log``."""
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(_executable(argv, env), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM, as `docker stop` sends it, then the exit status (killed after 30 s)."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError("still running 30 s after SIGTERM") from None


def healthcheck(port: int, env: dict[str, str]) -> int:
    """The image's HEALTHCHECK command's exit status (0 healthy, 1 unhealthy)."""
    argv = _executable(on_port(healthcheck_command(), port), env)
    return subprocess.run(argv, env=env, capture_output=True, timeout=10).returncode


def wait_for_output(log: Path, text: str, count: int = 1) -> str:
    deadline = time.monotonic() + STARTUP_SECONDS
    while (output := log.read_text()).count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} x{count} never appeared in {log.name}:\n{output}"
        time.sleep(0.1)
    return output


def test_image_command_serves_with_the_configured_workers_passes_its_healthcheck_and_stops_on_sigterm(tmp_path):
    """`docker run` of the image with CHATBOTS_SERVE_WORKERS=2 and nothing else: the embedded
    SQLite default, in the working directory."""
    env = image_environment() | {"CHATBOTS_SERVE_WORKERS": "2"}
    port = free_port()
    log = tmp_path / "serve.log"
    process = start(on_port(image_command(), port), env, tmp_path, log)
    try:
        wait_until_healthy(port, STARTUP_SECONDS)
        assert healthcheck(port, env) == 0
        wait_for_output(log, "Started server process", count=2)  # the two worker processes
    finally:
        status = stop(process)
    assert status == 0, log.read_text()
    assert healthcheck(port, env) == 1  # nothing answers any more: unhealthy
    assert (tmp_path / "chatbots.db").exists()


async def test_compose_commands_as_processes_migrate_then_the_api_is_ready_and_the_worker_runs(
    tmp_path, redis_url
):
    """migrate, api and worker with compose.yaml's commands and environments, in compose's order,
    on a new empty database of the suite's kind: the one-shot migration makes the schema, the API
    (which never migrates) reports it ready, the worker runs; SIGTERM stops both with status 0."""
    services = compose()["services"]

    def environment(service: str, database_url: str) -> dict[str, str]:
        written = {k: interpolate(str(v), DOT_ENV) for k, v in services[service]["environment"].items()}
        local = {"CHATBOTS_DATABASE_URL": database_url, "CHATBOTS_REDIS_URL": redis_url}
        return image_environment() | DOT_ENV | written | {k: v for k, v in local.items() if k in written}

    async with own_database(tmp_path, migrated=False) as database_url:
        migrate_env = environment("migrate", database_url)
        migrate_command = _executable(image_command(services["migrate"]["command"]), migrate_env)
        migrate = await asyncio.to_thread(
            subprocess.run, migrate_command, env=migrate_env, cwd=tmp_path, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert migrate.returncode == 0, migrate.stderr
        assert "is up to date" in migrate.stdout

        port = free_port()
        api_log, worker_log = tmp_path / "api.log", tmp_path / "worker.log"
        api_command = on_port(image_command(services["api"].get("command")), port)
        api = start(api_command, environment("api", database_url), tmp_path, api_log)
        worker_command = image_command(services["worker"]["command"])
        worker = start(worker_command, environment("worker", database_url), tmp_path, worker_log)
        try:
            await asyncio.to_thread(wait_until_healthy, port, STARTUP_SECONDS)
            async with httpx.AsyncClient() as http:
                ready = await http.get(f"http://127.0.0.1:{port}/readyz")
            assert ready.status_code == 200, ready.text  # reachable, and the schema at head
            await asyncio.to_thread(wait_for_output, worker_log, "delivery worker started")
        finally:
            statuses = [await asyncio.to_thread(stop, process) for process in (api, worker)]
        assert statuses == [0, 0], api_log.read_text() + worker_log.read_text()
        assert "delivery worker stopped" in worker_log.read_text()
