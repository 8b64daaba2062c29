"""Supply-chain checks for ``.ci/run`` (run with the venv's Python: ``.venv/bin/python``).

1. litellm 1.82.7 and 1.82.8 (published with a credential stealer that ran from a ``.pth``
   file at every interpreter start) in a lock file or installed: fail.
2. A ``.pth`` file in site-packages that is not one of the expected ones: fail. Python runs the
   ``import`` lines of every ``.pth`` file at start-up, before any of our code, which is what
   that attack used. Expected here: setuptools' ``distutils-precedence.pth`` and the editable
   install of this project (``__editable__.chatbots_api-<version>.pth``), each with the content
   its tool writes.
3. ``pip-audit`` over both lock files (``--disable-pip``: the locks are fully pinned and
   hashed, so nothing is installed; it needs only its vulnerability source, PyPI's JSON API).
   Known vulnerabilities fail, except those listed in ``.ci/pip-audit-ignore`` (one id a line,
   with the reason in a comment). The report goes to ``test-output/pip-audit.json``. When the
   vulnerability source cannot be reached, that is said plainly and the check does not fail:
   it cannot vouch either way, and the network is not the change's fault.

Exit status 0 when every check passed (or pip-audit could not run), 1 otherwise.
"""

import json
import re
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCKS = (ROOT / "requirements.lock", ROOT / "requirements-test.lock")
COMPROMISED = {"litellm": {"1.82.7", "1.82.8"}}
REPORT = ROOT / "test-output" / "pip-audit.json"
IGNORE_FILE = ROOT / ".ci" / "pip-audit-ignore"

# name pattern -> what each line of the file may be
EXPECTED_PTH: dict[re.Pattern[str], re.Pattern[str]] = {
    re.compile(r"distutils-precedence\.pth"): re.compile(
        r"import os; var = 'SETUPTOOLS_USE_DISTUTILS'; enabled = os\.environ\.get\(var, 'local'\) == 'local'; "
        r"enabled and __import__\('_distutils_hack'\)\.add_shim\(\); ?"
    ),
    re.compile(r"__editable__\.chatbots_api-[\w.]+\.pth"): re.compile(
        # a path to the checkout, or setuptools' finder hook for this project
        r"(/[^;\n]*|import __editable___chatbots_api_[\w]+_finder; "
        r"__editable___chatbots_api_[\w]+_finder\.install\([^)]*\))"
    ),
}
_PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", re.MULTILINE)


def compromised_pins(lock: Path) -> list[str]:
    problems = []
    for name, version in _PIN.findall(lock.read_text()):
        if version in COMPROMISED.get(name.lower().replace("_", "-"), ()):
            problems.append(f"{lock.name}: {name}=={version} is a compromised release")
    return problems


def compromised_installed() -> list[str]:
    problems = []
    for name, versions in COMPROMISED.items():
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        if version in versions:
            problems.append(f"installed: {name} {version} is a compromised release")
    return problems


def site_packages() -> list[Path]:
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    return sorted(Path(p) for p in paths)


def unexpected_pth(directory: Path) -> list[str]:
    problems = []
    for pth in sorted(directory.glob("*.pth")):
        content = next((c for n, c in EXPECTED_PTH.items() if n.fullmatch(pth.name)), None)
        if content is None:
            problems.append(f"unexpected .pth file {pth} (first line: {_first_line(pth)!r})")
            continue
        lines = [line for line in pth.read_text(errors="replace").splitlines() if line.strip()]
        if not all(content.fullmatch(line) for line in lines):
            problems.append(f".pth file {pth} does not have the content its tool writes: {_first_line(pth)!r}")
    return problems


def _first_line(path: Path) -> str:
    return (path.read_text(errors="replace").splitlines() or [""])[0][:200]


def ignored_vulnerabilities() -> list[str]:
    if not IGNORE_FILE.exists():
        return []
    ids = (line.split("#", 1)[0].strip() for line in IGNORE_FILE.read_text().splitlines())
    return [i for i in ids if i]


def audit() -> list[str]:
    """pip-audit's findings as problems; [] when clean or when it could not reach its source."""
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.unlink(missing_ok=True)  # never read an earlier run's report as this one's
    command = [sys.executable, "-m", "pip_audit", "--disable-pip", "--progress-spinner", "off",
               "-f", "json", "-o", str(REPORT)]  # fmt: skip
    for lock in LOCKS:
        command += ["-r", str(lock)]
    for vuln in ignored_vulnerabilities():
        command += ["--ignore-vuln", vuln]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    output = (done.stderr or done.stdout).strip()[-2000:]
    found = _findings(REPORT, output) if done.returncode in (0, 1) else output
    if isinstance(found, str):
        print("pip-audit could NOT check for known vulnerabilities: its source, PyPI's JSON API, "
              f"is not reachable from here; not failing. It said: {found}")  # fmt: skip
        return []
    checked, problems = found
    print(f"pip-audit: {checked} packages checked, report in {REPORT.relative_to(ROOT)}")
    return problems


def _findings(report: Path, output: str) -> tuple[int, list[str]] | str:
    """(packages checked, vulnerabilities found), or why nothing could be checked."""
    try:
        data = json.loads(report.read_text())
    except (OSError, ValueError):
        return output or "no report written"
    dependencies = data.get("dependencies", [])
    skipped = [d for d in dependencies if "skip_reason" in d]
    if dependencies and len(skipped) == len(dependencies):
        # Every lookup failed (it answers "not found on PyPI" when the API is not reachable).
        return f"every package skipped, e.g. {skipped[0]['skip_reason']!r}"
    problems = [
        f"{d['name']} {d['version']}: {v['id']} (fixed in {', '.join(v.get('fix_versions') or ['-'])})"
        for d in dependencies for v in d.get("vulns", [])
    ]  # fmt: skip
    return len(dependencies) - len(skipped), problems


def main() -> int:
    problems = [p for lock in LOCKS for p in compromised_pins(lock)] + compromised_installed()
    for directory in site_packages():
        problems += unexpected_pth(directory)
    if "--no-audit" not in sys.argv:
        problems += audit()
    for problem in problems:
        print("SUPPLY CHAIN:", problem)
    if not problems:
        print("supply chain: no compromised release, no unexpected .pth file (pip-audit: see above)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
