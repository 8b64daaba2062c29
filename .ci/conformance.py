"""Conformance of the running service to its own OpenAPI document (issue 9, item 4).

Starts ``chatbots serve`` on 127.0.0.1 (the embedded default in a fresh directory, or the
database given with ``--database-url``), gives the demo user a fresh write key, and runs
schemathesis against it with every check (``--checks all``: not_a_server_error,
status_code_conformance, response_schema_conformance, ignored_auth, ...) on the three
endpoints, ``GET /api/deliveries/{id}`` and the OAuth2 machine endpoints. The demo chatbot's id
and version 0 are pinned (a random UUID only ever finds no chatbot). Exits non-zero on any
failure, or when fewer than ``--min-cases`` cases were generated.

    .venv/bin/python .ci/conformance.py                 # the embedded default (SQLite)
    .venv/bin/python .ci/conformance.py --database-url postgresql+asyncpg://...

``schemathesis.toml`` (next to this file) holds what this run asks of the tool and why.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.server import free_port, wait_until_healthy  # noqa: E402  (the suite's own helpers)

CONFIG = Path(__file__).resolve().parent / "schemathesis.toml"
HOOKS = Path(__file__).resolve().parent / "conformance_hooks.py"
BIN = Path(sys.executable).parent
OPERATIONS = (
    "/channels/api/{experiment_id}/incoming_message",
    "/channels/api/{experiment_id}/v{version}/incoming_message",
    "/api/trigger_bot",
    "/api/deliveries/{delivery_id}",
    "/o/token/",
    "/o/revoke_token/",
    "/o/introspect/",
    "/.well-known/oauth-authorization-server",
)
# The service's own limits would turn most of a thousand quick requests into 429s, which say
# nothing about the rest of the document (429 itself is declared and tested elsewhere). No
# worker: triggered messages stay pending instead of being sent to real providers.
SERVER_SETTINGS = {
    "RATE_LIMIT_TEAM": "1000000/minute",
    "RATE_LIMIT_AUTH_FAILURES": "1000000/minute",
    "RATE_LIMIT_TOKEN": "1000000/minute",
    "WORKER_IN_PROCESS": "false",
    "LOG_LEVEL": "WARNING",
}


def chatbots(args: list[str], env: dict[str, str], cwd: Path) -> dict:  # type: ignore[type-arg]
    done = subprocess.run(
        [str(BIN / "chatbots"), *args, "--json"], env=env, cwd=cwd, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.exit(f"chatbots {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return json.loads(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="Default: the embedded default in a fresh directory.")
    parser.add_argument("--max-examples", type=int, default=60, help="Per operation and phase.")
    parser.add_argument("--min-cases", type=int, default=1000, help="Fail below this many generated cases.")
    parser.add_argument("--seed", type=int, default=9, help="Hypothesis seed: the same cases on every run.")
    options = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="chatbots-conformance-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATBOTS_")}
    env.pop("OPENAI_API_KEY", None)  # the demo chatbot answers with the offline echo model
    env.pop("ANTHROPIC_API_KEY", None)
    env.update({f"CHATBOTS_{name}": value for name, value in SERVER_SETTINGS.items()})
    if options.database_url:
        env |= {"CHATBOTS_DATABASE_URL": options.database_url, "CHATBOTS_SECRET_KEY": "conformance-secret-key"}
    env["PYTHONPATH"] = str(REPO)

    chatbots(["db", "upgrade"], env, work)
    chatbot = chatbots(["demo"], env, work)["chatbot_public_id"]
    key = chatbots(["apikey", "create", "--email", "demo@example.com", "--team", "demo", "--name", "conformance",
                    "--write"], env, work)["key"]  # fmt: skip

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (work / "serve.log").open("wb")
    server = subprocess.Popen(
        [str(BIN / "chatbots"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    started = time.monotonic()
    try:
        wait_until_healthy(port, seconds=60)
        # The config with this run's values written in (dictionary values are not read from
        # the environment).
        config = work / "schemathesis.toml"
        config.write_text(
            CONFIG.read_text().replace("${CONFORMANCE_CHATBOT}", chatbot).replace("${CONFORMANCE_HOOKS}", str(HOOKS))
        )
        command = [
            str(BIN / "schemathesis"), "--config-file", str(config), "run", f"{url}/openapi.json",
            "--checks", "all", "--header", f"X-api-key: {key}",
            "--max-examples", str(options.max_examples), "--seed", str(options.seed),
            "--report", "junit", "--report-dir", str(work / "report"),
            *(arg for path in OPERATIONS for arg in ("--include-path", path)),
        ]  # fmt: skip
        done = subprocess.run(command, env=env, cwd=work, capture_output=True, text=True, check=False)
    finally:
        server.terminate()
        server.wait(20)
        log.close()
    output = done.stdout + done.stderr
    print(output.replace(key, "<key>"))
    print(f"schemathesis took {time.monotonic() - started:.0f} s (server log: {work / 'serve.log'})")
    cases = _generated_cases(output)
    if done.returncode != 0:
        return done.returncode
    if cases < options.min_cases:
        print(f"only {cases} generated cases (at least {options.min_cases} wanted)")
        return 1
    return 0


def _generated_cases(output: str) -> int:
    found = re.search(r"(\d[\d,]*) generated", output)
    return int(found.group(1).replace(",", "")) if found else 0


if __name__ == "__main__":
    sys.exit(main())
