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

# Inclusive share of stacks through these frames: the costs worth knowing by name.
WATCH = [
    ("SQLAlchemy ORM/Core (any frame in sqlalchemy)", re.compile(r"\(sqlalchemy/")),
    ("asyncpg (any frame in asyncpg)", re.compile(r"\(asyncpg/")),
    ("pool checkout pre-ping (pool_pre_ping=True)", re.compile(r"do_ping|_async_ping|\.ping \(")),
    ("pool checkout/checkin", re.compile(r"_ConnectionFairy\._checkout|_ConnectionRecord\.checkout|_finalize_fairy|_ConnectionFairy\._checkin")),
    ("ORM flush (unit of work)", re.compile(r"Session\.flush \(|Session\._flush \(")),
    ("Session.commit", re.compile(r"Session\.commit \(")),
    ("Session.refresh", re.compile(r"Session\.refresh \(")),
    ("ORM row loading (loading.instances)", re.compile(r"^instances \(sqlalchemy/orm/loading")),
    ("statement compile / cache key", re.compile(r"_generate_cache_key|_compiler \(|compile \(sqlalchemy")),
    ("FastAPI dependency solving (includes authenticate, get_session)", re.compile(r"solve_dependencies \(")),
    ("sync dependency in a thread (run_in_threadpool)", re.compile(r"run_in_threadpool|run_sync_in_worker_thread")),
    ("response serialisation (serialize_response/jsonable_encoder)", re.compile(r"serialize_response|jsonable_encoder")),
    ("request body parsing (parse_json_body)", re.compile(r"parse_json_body \(")),
    ("authentication (authenticate)", re.compile(r"^authenticate \(")),
    ("LLM call (httpx/httpcore)", re.compile(r"\((httpx|httpcore)/")),
    ("provider secret decryption (cryptography)", re.compile(r"decrypt_config|\(cryptography/")),
    ("logging", re.compile(r"\(logging/")),
    ("stdlib json", re.compile(r"\(json/")),
]


def parse_frame(frame: str) -> tuple[str, str]:
    """(function, file) of a py-spy frame ``func (file:line)``."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip(), ""
    return match["func"], match["file"]


def package_of(path: str) -> str:
    """The library a frame belongs to. py-spy prints paths relative to sys.path entries
    (``sqlalchemy/orm/session.py``, ``app/db.py``, ``threading.py``)."""
    for marker in ("site-packages/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    if "/lib/python3" in path:
        path = path.split("/lib/python3", 1)[1].split("/", 1)[-1]
    head = path.split("/", 1)[0]
    module = head[:-3] if head.endswith(".py") else head
    if module == "app":
        return "app (this service)"
    if module in sys.stdlib_module_names or module.startswith("_"):
        return f"stdlib {module}"
    return module or "other"


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
    inclusive: Counter[str] = Counter()  # any frame, once per stack
    lib_entry: Counter[str] = Counter()  # first non-app frame called from app code
    watched: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [parse_frame(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        raw_frames = [f.strip() for f in stack.split(";") if f]
        for label, pattern in WATCH:
            if any(pattern.search(f) for f in raw_frames):
                watched[label] += count
        func, path = frames[-1]
        by_package[package_of(path)] += count
        by_leaf[f"{func} ({short(path)})"] += count
        seen: set[str] = set()
        for f, p in frames:
            key = f"{f} ({short(p)})"
            if key in seen:
                continue
            seen.add(key)
            inclusive[key] += count
            if package_of(p).startswith("app"):
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
        "inclusive": pct(inclusive, 2 * top),
        "app_to_library": pct(lib_entry, top),
        "watch": [(label, watched[label], round(100.0 * watched[label] / total, 1) if total else 0.0)
                  for label, _ in WATCH],
    }


def render(summary: dict[str, Any]) -> str:
    out = [
        f"samples: {summary['samples']} (non-idle samples of the service's threads). "
        "SQLAlchemy's ORM runs in greenlets: py-spy shows a greenlet's stack from its own "
        "root, so app frames above an ORM call are often missing (inclusive app time is a "
        "lower bound; library self time is exact)."
    ]
    for title, key in (
        ("named costs, inclusive (share of samples with such a frame on the stack)", "watch"),
        ("self time by package (leaf frame)", "self_by_package"),
        ("hottest leaf functions", "self_by_function"),
        ("app functions, inclusive", "app_inclusive"),
        ("any function, inclusive (a stack counts once per function)", "inclusive"),
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
