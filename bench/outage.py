"""TODO (issue 9): the outage scenario. Contract: ``outage(bench)`` measures and stores its results in
``bench.results["outage"]``; ``targets(results, add)`` adds its PASS/FAIL lines; ``section(results)``
returns its markdown lines for bench/RESULTS.md."""

from __future__ import annotations

from typing import Any

from bench.harness import Bench


async def outage(bench: Bench) -> None:
    raise NotImplementedError("outage scenario")


def targets(results: dict[str, Any], add: Any) -> None:
    return None


def section(results: dict[str, Any]) -> list[str]:
    return []
