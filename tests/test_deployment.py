"""The container deployment as files: the Dockerfile, .dockerignore, compose.yaml, the load
balancer's Caddyfile and .env.example, each read as its tool reads it (tests/deployment_files.py)
and checked against what the deployment must be.

No Docker engine runs here, so no image is built and no container started. What runs of it runs
outside Docker in tests/test_deployment_processes.py; hadolint lints the Dockerfile in .ci/run
(once per CI run, not once per suite)."""

import json
import re
import shlex
import shutil
import subprocess
from ipaddress import ip_address, ip_network

import pytest

from tests.deployment_files import (
    ROOT,
    compose,
    compose_text,
    dockerfile_stages,
    dockerignore_patterns,
    dockerignored,
    healthcheck_command,
    image_command,
    runtime_stage,
)

CADDYFILE = ROOT / "docker" / "Caddyfile"
# What the services built from the image must not carry: a fixed name or a host port would stop
# `docker compose up --scale api=3 --scale worker=2` (two replicas cannot share either).
SCALABLE = ("api", "worker")


def _run_words() -> list[list[str]]:
    """Each RUN of the build stage, split into its shell commands' words."""
    build = dockerfile_stages()[1][0]
    return [shlex.split(part) for run in build.all("RUN") for part in run.arguments.split("&&")]


def test_build_stage_makes_a_venv_of_exactly_the_lock_and_installs_the_project():
    _, stages = dockerfile_stages()
    build = stages[0]
    assert build.name == "build" and len(stages) == 2
    assert any(i.arguments.split() == ["requirements.lock", "./"] for i in build.all("COPY"))
    commands = _run_words()
    venv = next(c for c in commands if c[:3] == ["python", "-m", "venv"])
    assert venv[-1] == "/opt/venv"
    installs = [c for c in commands if "install" in c]
    lock_install = next(c for c in installs if "requirements.lock" in c)
    # The lock's pins and nothing else: no resolution beyond it, no sdist compiled.
    assert "--no-deps" in lock_install and "--only-binary=:all:" in lock_install
    assert lock_install[lock_install.index("requirements.lock") - 1] == "-r"
    assert ["--python", "/opt/venv/bin/python"] == lock_install[1:3]
    assert any(c[-1] == "check" and "/opt/venv/bin/python" in c for c in commands)
    project = next(c for c in installs if c[-2:] == ["-e", "."])
    assert "--no-deps" in project and "/opt/venv/bin/python" in project
    # The code the editable install points at, with the migrations `db upgrade` reads beside it.
    copied = {word for i in build.all("COPY") for word in i.arguments.split()[:-1]}
    assert copied == {"requirements.lock", "pyproject.toml", "alembic.ini", "migrations", "app"}


def test_both_stages_use_one_python_311_slim_base_pinned_by_full_tag_and_digest():
    build_args, stages = dockerfile_stages()
    pinned = r"python:3\.11\.\d+-slim-\w+@sha256:[0-9a-f]{64}"
    assert re.fullmatch(pinned, build_args["PYTHON_IMAGE"])
    assert [s.base for s in stages] == [build_args["PYTHON_IMAGE"]] * 2


def test_runtime_stage_copies_the_venv_runs_as_non_root_and_installs_nothing():
    runtime = runtime_stage()
    assert runtime.name == "runtime"
    copies = [i.arguments.split() for i in runtime.all("COPY")]
    assert ["--from=build", "/opt/venv", "/opt/venv"] in copies
    assert ["--from=build", "/srv/chatbots", "/srv/chatbots"] in copies
    uid, _, gid = runtime.last("USER").arguments.partition(":")
    assert int(uid) != 0 and int(gid) != 0
    adds = runtime.last("RUN").arguments
    assert f"useradd --system --uid {uid} --gid chatbots" in adds and f"groupadd --system --gid {gid}" in adds
    # No package manager, compiler or pip install in the final image: only the user is added.
    assert len(runtime.all("RUN")) == 1
    assert not re.search(r"apt-get|apk |gcc|build-essential|pip ", runtime.last("RUN").arguments)
    assert runtime.environment()["PATH"].startswith("/opt/venv/bin:")
    assert runtime.last("WORKDIR").arguments == "/var/lib/chatbots"  # the user's home: writable


def test_image_healthcheck_asks_healthz_with_python_urllib_not_curl():
    options = runtime_stage().last("HEALTHCHECK").arguments.split(" CMD ")[0].split()
    assert {o.split("=")[0] for o in options} >= {"--interval", "--timeout", "--start-period", "--retries"}
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"]
    assert "urllib.request.urlopen('http://127.0.0.1:8000/healthz'" in command[2]
    assert "timeout=" in command[2]
    assert not [i for i in runtime_stage().instructions if re.search(r"\b(curl|wget)\b", i.arguments)]


def test_image_runs_chatbots_serve_on_all_interfaces_on_its_exposed_port():
    command = image_command()
    assert command[:2] == ["chatbots", "serve"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--port") + 1] == runtime_stage().last("EXPOSE").arguments == "8000"
    # The worker count is CHATBOTS_SERVE_WORKERS (a setting), not a fixed option of the image.
    assert "--workers" not in command


def test_dockerignore_sends_the_build_inputs_and_nothing_else():
    patterns = dockerignore_patterns()
    left_out = [
        ".git/HEAD", ".venv/bin/python", ".env", "chatbots.db", "app/chatbots.db", "bench/out/run.json",
        "test-output/shot.png", "tests/test_auth.py", "app/__pycache__/main.cpython-311.pyc",
        "README.md", "compose.yaml", "requirements-test.lock", "secrets/key.pem",
    ]  # fmt: skip
    sent = ["app/main.py", "app/templates/login.html", "migrations/env.py", "alembic.ini",
            "pyproject.toml", "requirements.lock"]  # fmt: skip
    assert [p for p in left_out if not dockerignored(p, patterns)] == []
    assert [p for p in sent if dockerignored(p, patterns)] == []
    # And the Dockerfile copies nothing the context no longer holds.
    copied = [
        word for stage in dockerfile_stages()[1] for i in stage.all("COPY")
        if not i.arguments.startswith("--from") for word in i.arguments.split()[:-1]
    ]  # fmt: skip
    assert [p for p in copied if dockerignored(p, patterns)] == []


def test_compose_runs_postgres_15_redis_a_migration_api_worker_and_a_load_balancer():
    services = compose()["services"]
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker", "lb"}
    assert re.fullmatch(r"postgres:15\.\d+(-\w+)?", services["postgres"]["image"])
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+(-\w+)?", services["redis"]["image"])
    assert re.fullmatch(r"caddy:\d+\.\d+\.\d+(-\w+)?", services["lb"]["image"])
    # One image for the three that run our code, built from this Dockerfile.
    ours = [services[name] for name in ("migrate", "api", "worker")]
    assert {(s["build"], s["image"]) for s in ours} == {(".", "chatbots-api:local")}
    assert services["worker"]["command"] == ["worker"]
    assert "command" not in services["api"]  # the image's: chatbots serve --host 0.0.0.0 --port 8000


def test_postgres_keeps_its_data_in_a_named_volume_and_reports_its_health():
    spec = compose()
    postgres = spec["services"]["postgres"]
    volume, _, target = postgres["volumes"][0].partition(":")
    assert volume in spec["volumes"] and target == "/var/lib/postgresql/data"
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert spec["services"]["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_migrations_run_once_in_a_one_shot_service_that_api_and_worker_wait_for():
    services = compose()["services"]
    migrate = services["migrate"]
    assert migrate["command"] == ["db", "upgrade"] and migrate["restart"] == "no"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in SCALABLE:
        depends_on = services[name]["depends_on"]
        assert depends_on["migrate"] == {"condition": "service_completed_successfully"}
        assert depends_on["postgres"] == {"condition": "service_healthy"}
        # However many replicas start, none migrates by itself.
        assert services[name]["environment"]["CHATBOTS_AUTO_MIGRATE"] == "false"
    assert services["api"]["depends_on"]["redis"] == {"condition": "service_healthy"}
    assert services["lb"]["depends_on"] == {"api": {"condition": "service_healthy"}}


def test_api_and_worker_scale_without_fixed_names_or_host_ports():
    services = compose()["services"]
    assert [name for name, s in services.items() if "container_name" in s] == []
    assert [name for name in SCALABLE if "ports" in services[name]] == []
    assert services["api"]["expose"] == ["8000"]
    # The one published port is the load balancer's, on loopback unless told otherwise.
    assert services["lb"]["ports"] == ["${LB_BIND:-127.0.0.1}:${LB_PORT:-8000}:80"]
    # The image's /healthz check means nothing where nothing serves HTTP.
    assert services["worker"]["healthcheck"] == {"disable": True}
    assert services["migrate"]["healthcheck"] == {"disable": True}
    for name in SCALABLE:
        assert services[name]["stop_grace_period"] == "60s" and services[name]["init"] is True


def test_api_counts_rate_limits_in_redis_and_leaves_deliveries_to_the_worker():
    api = compose()["services"]["api"]["environment"]
    assert api["CHATBOTS_REDIS_URL"] == "async+redis://redis:6379/0"
    assert api["CHATBOTS_WORKER_IN_PROCESS"] == "false"


def test_api_believes_forwarded_headers_from_the_load_balancer_alone():
    spec = compose()
    lb_address = spec["services"]["lb"]["networks"]["backend"]["ipv4_address"]
    assert spec["services"]["api"]["environment"]["CHATBOTS_FORWARDED_ALLOW_IPS"] == lb_address
    subnet = spec["networks"]["backend"]["ipam"]["config"][0]["subnet"]
    assert ip_address(lb_address) in ip_network(subnet)
    # Caddy proxies to every address the `api` service name resolves to, on the image's port.
    caddyfile = CADDYFILE.read_text()
    assert re.search(r"^\s*dynamic a api 8000 \{", caddyfile, re.M)
    assert spec["services"]["lb"]["volumes"] == ["./docker/Caddyfile:/etc/caddy/Caddyfile:ro"]


def test_compose_secrets_come_from_an_uncommitted_env_file():
    required = set(re.findall(r"\$\{(\w+):\?", compose_text()))
    assert required == {"POSTGRES_PASSWORD", "CHATBOTS_SECRET_KEY"}
    example = (ROOT / ".env.example").read_text().splitlines()
    # Each is in .env.example, without a value: a copy cannot run with a published secret.
    assert {line for line in example if line.split("=")[0] in required} == {f"{n}=" for n in required}
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()
    tracked = subprocess.run(["git", "ls-files", ".env"], cwd=ROOT, capture_output=True, text=True)
    assert tracked.returncode == 0 and tracked.stdout == ""
    assert compose()["services"]["api"]["env_file"] == ".env"


@pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy is not installed (apt-get install caddy)")
def test_caddy_reads_the_load_balancer_config_as_meant():
    """Caddy's own parser (Debian's caddy; .ci/run installs it): the replicas looked up in DNS
    under the service name every 5 s, least requests in flight, no admin API."""
    adapted = subprocess.run(
        ["caddy", "adapt", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert adapted.returncode == 0, adapted.stderr
    config = json.loads(adapted.stdout)
    assert config["admin"] == {"disabled": True}
    server = config["apps"]["http"]["servers"]["srv0"]
    assert server["listen"] == [":80"]
    (proxy,) = server["routes"][0]["handle"]
    every_5_s = 5_000_000_000  # nanoseconds
    assert proxy["dynamic_upstreams"] == {"source": "a", "name": "api", "port": "8000", "refresh": every_5_s}
    assert proxy["load_balancing"]["selection_policy"] == {"policy": "least_conn"}
    assert proxy["load_balancing"]["try_duration"] == 10_000_000_000
    assert proxy["health_checks"]["passive"]["fail_duration"] == 30_000_000_000
