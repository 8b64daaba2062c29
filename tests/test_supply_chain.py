"""The supply-chain checks of ``.ci/supply_chain.py`` (run by ``.ci/run``): on planted files in a
temporary folder, and on this checkout's real lock files and virtual environment."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("supply_chain", ROOT / ".ci" / "supply_chain.py")
assert _spec and _spec.loader
supply_chain = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(supply_chain)

DISTUTILS = ("import os; var = 'SETUPTOOLS_USE_DISTUTILS'; enabled = os.environ.get(var, 'local') == 'local'; "
             "enabled and __import__('_distutils_hack').add_shim(); \n")  # fmt: skip


@pytest.mark.parametrize("version", ["1.82.7", "1.82.8"])
def test_a_compromised_litellm_in_a_lock_file_is_reported(tmp_path, version):
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"httpx==0.28.1 \\\n    --hash=sha256:00\nlitellm=={version} \\\n    --hash=sha256:11\n")
    assert supply_chain.compromised_pins(lock) == [f"requirements.lock: litellm=={version} is a compromised release"]


def test_the_lock_files_pin_no_compromised_release_and_carry_hashes():
    for lock in supply_chain.LOCKS:
        assert supply_chain.compromised_pins(lock) == []
        text = lock.read_text()
        pins = re.findall(r"^[A-Za-z0-9_.-]+==\S+", text, re.MULTILINE)
        hashed = re.findall(
            r"^[A-Za-z0-9_.-]+==[^\n]* \\\n(?:[ \t]+--hash=sha256:[0-9a-f]{64}(?: \\)?\n)+", text, re.MULTILINE
        )
        assert pins and len(hashed) == len(pins), f"{lock.name}: {len(pins) - len(hashed)} pins without hashes"


def test_an_unexpected_pth_file_is_reported(tmp_path):
    (tmp_path / "distutils-precedence.pth").write_text(DISTUTILS)
    (tmp_path / "__editable__.chatbots_api-0.1.0.pth").write_text("/work/checkout\n")
    assert supply_chain.unexpected_pth(tmp_path) == []
    (tmp_path / "litellm_init.pth").write_text("import os, base64; exec(base64.b64decode('...'))\n")
    [problem] = supply_chain.unexpected_pth(tmp_path)
    assert problem.startswith(f"unexpected .pth file {tmp_path / 'litellm_init.pth'}")


def test_an_expected_pth_name_with_other_content_is_reported(tmp_path):
    (tmp_path / "distutils-precedence.pth").write_text(DISTUTILS + "import evil\n")
    [problem] = supply_chain.unexpected_pth(tmp_path)
    assert "does not have the content its tool writes" in problem


def test_this_environment_has_only_the_expected_pth_files():
    assert [p for d in supply_chain.site_packages() for p in supply_chain.unexpected_pth(d)] == []
    assert supply_chain.compromised_installed() == []


def test_pip_audit_findings_fail_and_an_unreachable_source_is_said(tmp_path):
    report = tmp_path / "pip-audit.json"
    report.write_text(json.dumps({"dependencies": [
        {"name": "aiohttp", "version": "3.8.0", "vulns": [{"id": "PYSEC-1", "fix_versions": ["3.9.0"]}]},
        {"name": "httpx", "version": "0.28.1", "vulns": []},
    ]}))  # fmt: skip
    assert supply_chain._findings(report, "") == (2, ["aiohttp 3.8.0: PYSEC-1 (fixed in 3.9.0)"])
    report.write_text(json.dumps({"dependencies": [
        {"name": "httpx", "skip_reason": "Dependency not found on PyPI and could not be audited: httpx (0.28.1)"},
    ]}))  # fmt: skip
    reason = supply_chain._findings(report, "")
    assert isinstance(reason, str) and "not found on PyPI" in reason
