"""Summarise a ``py-spy record --format raw`` profile (folded stacks: ``f1;f2;...;fN count``).

    python bench/pyspy_summary.py bench/out/run-<ts>/profile-service.txt [--top 25]

Prints where the CPU goes: self time by package (the leaf frame's library), the hottest leaf
functions, and inclusive time of the app's own functions (a stack counts once per function).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# (label, substring of the file path); first match wins.
_PACKAGES = [
    ("app (this service)", "/app/"),
    ("sqlalchemy", "/sqlalchemy/"),
    ("asyncpg", "/asyncpg/"),
    ("fastapi", "/fastapi/"),
    ("starlette", "/starlette/"),
    ("pydantic", "/pydantic"),
    ("httpx", "/httpx/"),
    ("httpcore", "/httpcore/"),
    ("anyio", "/anyio/"),
    ("h11", "/h11/"),
    ("uvicorn", "/uvicorn/"),
    ("httptools", "/httptools/"),
    ("uvloop", "/uvloop/"),
    ("orjson", "orjson"),
    ("cryptography", "/cryptography/"),
    ("sniffio", "/sniffio/"),
    ("typing/dataclasses (stdlib)", "/typing.py"),
    ("asyncio (stdlib)", "/asyncio/"),
    ("logging (stdlib)", "/logging/"),
    ("json (stdlib)", "/json/"),
    ("uuid (stdlib)", "/uuid.py"),
    ("ssl/socket (stdlib)", "/socket.py"),
]


def parse_frame(frame: str) -> tuple[str, str]:
    """(function, file) of a py-spy frame ``func (file:line)``."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip(), ""
    return match["func"], match["file"]


def package_of(path: str) -> str:
    for label, needle in _PACKAGES:
        if needle in path:
            if label.startswith("app") and ("site-packages" in path or "/lib/python" in path):
                continue
            return label
    if "/lib/python3" in path and "site-packages" not in path:
        return "other stdlib"
    if "site-packages" in path:
        return "other: " + path.split("site-packages/", 1)[1].split("/", 1)[0]
    return "other"


def short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "/lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def summarise(text: str, top: int = 25) -> dict[str, Any]:
    total = 0
    by_package: Counter[str] = Counter()
    by_leaf: Counter[str] = Counter()
    app_inclusive: Counter[str] = Counter()
    lib_entry: Counter[str] = Counter()  # first non-app frame called from app code
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [parse_frame(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        func, path = frames[-1]
        by_package[package_of(path)] += count
        by_leaf[f"{func} ({short(path)})"] += count
        seen: set[str] = set()
        for i, (f, p) in enumerate(frames):
            if package_of(p).startswith("app"):
                key = f"{f} ({short(p)})"
                if key not in seen:
                    seen.add(key)
                    app_inclusive[key] += count
        # Where app code hands over to a library: the deepest app frame's callee.
        app_idx = [i for i, (_, p) in enumerate(frames) if package_of(p).startswith("app")]
        if app_idx and app_idx[-1] + 1 < len(frames):
            callee, callee_path = frames[app_idx[-1] + 1]
            caller, caller_path = frames[app_idx[-1]]
            lib_entry[f"{caller} -> {package_of(callee_path)}.{callee}"] += count

    def pct(counter: Counter[str], n: int) -> list[tuple[str, int, float]]:
        return [(k, v, round(100.0 * v / total, 1)) for k, v in counter.most_common(n)]

    return {
        "samples": total,
        "self_by_package": pct(by_package, 30),
        "self_by_function": pct(by_leaf, top),
        "app_inclusive": pct(app_inclusive, top),
        "app_to_library": pct(lib_entry, top),
    }


def render(summary: dict[str, Any]) -> str:
    out = [f"samples: {summary['samples']} (CPU-busy samples of the service's event loop)"]
    for title, key in (
        ("self time by package (leaf frame)", "self_by_package"),
        ("hottest leaf functions", "self_by_function"),
        ("app functions, inclusive", "app_inclusive"),
        ("app code -> library call sites (inclusive below the deepest app frame)", "app_to_library"),
    ):
        out.append(f"\n{title}:")
        out += [f"  {p:5.1f}%  {n:6d}  {k}" for k, n, p in summary[key]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    with open(args.profile) as f:
        print(render(summarise(f.read(), args.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
