"""TODO (issue 9): the scale scenario. Contract: ``scale_out(bench)`` measures and stores its results in
``bench.results["scale"]``; ``targets(results, add)`` adds its PASS/FAIL lines; ``section(results)``
returns its markdown lines for bench/RESULTS.md."""

from __future__ import annotations

from typing import Any

from bench.harness import Bench


async def scale_out(bench: Bench) -> None:
    raise NotImplementedError("scale scenario")


def targets(results: dict[str, Any], add: Any) -> None:
    return None


def section(results: dict[str, Any]) -> list[str]:
    return []
