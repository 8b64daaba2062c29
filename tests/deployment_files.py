"""The deployment files read the way their tools read them, for the deployment tests (no Docker
engine runs here): the Dockerfile's stages and instructions, .dockerignore's verdict on a path,
compose.yaml as YAML with its ``${...}`` variables, and the environment the image gives its
processes."""

import json
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
IMAGE_VENV_BIN = "/opt/venv/bin"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, ...
    arguments: str  # the rest, continuation lines joined

    def exec_form(self) -> list[str]:
        """The arguments of an exec-form instruction (``CMD ["serve", ...]``)."""
        value = json.loads(self.arguments)
        assert isinstance(value, list), f"{self.keyword} is not in exec form: {self.arguments}"
        return value


@dataclass
class Stage:
    base: str  # the FROM image, build arguments substituted
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"no {keyword} in stage {self.name}"
        return found[-1]

    def environment(self) -> dict[str, str]:
        """The ``ENV key=value ...`` pairs of this stage, unexpanded."""
        pairs = (item.partition("=") for i in self.all("ENV") for item in shlex.split(i.arguments))
        return {key: value for key, _, value in pairs}


def dockerfile_instructions(path: Path = ROOT / "Dockerfile") -> list[Instruction]:
    """Comment lines are skipped, also inside a continued instruction, as Docker does."""
    found: list[Instruction] = []
    pending = ""
    for line in path.read_text().splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        keyword, _, arguments = (pending + text).partition(" ")
        found.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    return found


def dockerfile_stages(path: Path = ROOT / "Dockerfile") -> tuple[dict[str, str], list[Stage]]:
    """The build arguments declared before the first FROM (with their defaults) and the stages."""
    build_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in dockerfile_instructions(path):
        if instruction.keyword == "ARG" and not stages:
            name, _, default = instruction.arguments.partition("=")
            build_args[name] = default
        elif instruction.keyword == "FROM":
            words = instruction.arguments.split()
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: build_args[m[1] or m[2]], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        else:
            stages[-1].instructions.append(instruction)
    return build_args, stages


def runtime_stage() -> Stage:
    return dockerfile_stages()[1][-1]


def image_command(command: list[str] | None = None) -> list[str]:
    """What a container of the image runs: its ENTRYPOINT followed by ``command`` (a compose
    service's ``command:``) or, without one, the image's CMD."""
    stage = runtime_stage()
    return stage.last("ENTRYPOINT").exec_form() + (command or stage.last("CMD").exec_form())


def healthcheck_command() -> list[str]:
    options, _, command = runtime_stage().last("HEALTHCHECK").arguments.partition("CMD ")
    return json.loads(command)


def image_environment() -> dict[str, str]:
    """The runtime stage's ENV as a process here gets it: the image's venv is this test run's venv,
    ``$PATH`` this machine's."""
    env = runtime_stage().environment()
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = env["PATH"].replace(IMAGE_VENV_BIN, venv_bin).replace("$PATH", os.environ["PATH"])
    return env


def on_port(argv: list[str], port: int) -> list[str]:
    """``argv`` with every mention of the image's port 8000 moved to ``port`` (tests share this
    machine: 8000 may be taken)."""
    return [re.sub(r"(?<=:)8000(?=/)|^8000$", str(port), arg) for arg in argv]


def dockerignore_patterns(path: Path = ROOT / ".dockerignore") -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether the builder leaves ``path`` out of the context: the last pattern that matches the
    path or one of its parent directories decides, a ``!`` pattern letting it back in."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _pattern_regex(pattern.removeprefix("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax: ``*`` within one path segment, ``**`` across any number of them."""
    tokens = re.split(r"(\*\*/|\*\*|\*|\?)", pattern)
    wildcards = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(wildcards.get(t, re.escape(t)) for t in tokens))


def compose_text() -> str:
    return (ROOT / "compose.yaml").read_text()


def compose() -> dict[str, Any]:
    """compose.yaml as YAML (``<<`` merge keys resolved, ``${...}`` left as written)."""
    return yaml.safe_load(compose_text())


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ``${NAME}``, ``${NAME:-default}`` and ``${NAME:?error}``."""

    def one(match: re.Match[str]) -> str:
        name, operator, word = match[1], match[2], match[3]
        if variables.get(name):
            return variables[name]
        assert operator != ":?", f"compose would stop: {word}"
        return word if operator == ":-" else ""

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, value)
