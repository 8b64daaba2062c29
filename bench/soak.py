"""TODO (issue 9): the soak scenario. Contract: ``soak(bench)`` measures and stores its results in
``bench.results["soak"]``; ``targets(results, add)`` adds its PASS/FAIL lines; ``section(results)``
returns its markdown lines for bench/RESULTS.md."""

from __future__ import annotations

from typing import Any

from bench.harness import Bench


async def soak(bench: Bench) -> None:
    raise NotImplementedError("soak scenario")


def targets(results: dict[str, Any], add: Any) -> None:
    return None


def section(results: dict[str, Any]) -> list[str]:
    return []
