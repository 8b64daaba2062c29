"""Crashing the run's PostgreSQL and starting it again on the same PGDATA, for the outage
scenario (``bench/outage.py``).

The crash is SIGKILL of the postmaster and every one of its children at once: what an OOM
kill or a lost host does. ``pg_ctl stop -m immediate`` would be gentler than that (SIGQUIT:
each backend tells its client "terminating connection" before it goes); with SIGKILL the
service only sees its sockets closed by the kernel, the harder case for its pools. Either way
the restart runs crash recovery from the WAL.

``.ci/start-postgres`` is never used to start it again: it drops and recreates the database of
a running cluster.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

from bench.processes import Postgres, as_postgres, port_in_use
from bench.sampling import children_of


def server_options(pg: Postgres) -> list[str]:
    """The options the postmaster runs with (``postmaster.opts``), without the binary and -D."""
    words = shlex.split(Path(pg.pgdata, "postmaster.opts").read_text())[1:]
    out, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word == "-D":
            skip = True
        else:
            out.append(word)
    return out


def durable(options: list[str]) -> list[str]:
    """The same options with commits made durable: start-postgres runs the bench's cluster with
    ``synchronous_commit=off``, under which a crash loses the commits of the last few hundred
    ms (PostgreSQL answers COMMIT before its WAL is written). Production keeps the default
    (on), and the outage's "no committed message lost" is a claim about that setting."""
    out: list[str] = []
    for word in options:
        if word.startswith("synchronous_commit="):
            out.pop()  # its "-c"
        else:
            out.append(word)
    return [*out, "-c", "synchronous_commit=on"]


def start(pg: Postgres, options: list[str], timeout: float = 120.0) -> None:
    """``pg_ctl start`` on the cluster's PGDATA (crash recovery first, after a crash); returns
    when it accepts connections."""
    opts = shlex.quote(" ".join(shlex.quote(o) for o in options))
    out = subprocess.run(
        as_postgres(f"pg_ctl -D '{pg.pgdata}' -l '{pg.log_path()}' -w -t {int(timeout)} -o {opts} start"),
        capture_output=True, text=True, timeout=timeout + 10,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"pg_ctl start failed: {out.stdout[-1000:]} {out.stderr[-1000:]}")


def stop(pg: Postgres) -> None:
    subprocess.run(as_postgres(f"pg_ctl -D '{pg.pgdata}' stop -m fast"), capture_output=True,
                   timeout=60)  # fmt: skip


def restart(pg: Postgres, options: list[str]) -> None:
    """A clean stop and a start with ``options`` (the run's other scenarios keep theirs)."""
    stop(pg)
    start(pg, options)


def kill(pg: Postgres, timeout: float = 10.0) -> int:
    """SIGKILL to the postmaster and all its processes; returns how many were killed once the
    port is closed."""
    postmaster = pg.postmaster_pid()
    if postmaster is None:
        raise RuntimeError("no postmaster.pid: PostgreSQL is not running")
    pids = [postmaster, *children_of(postmaster)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.perf_counter() + timeout
    while (port_in_use(pg.port) or _alive(postmaster)) and time.perf_counter() < deadline:
        time.sleep(0.01)
    return len(pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (not yet reaped by its parent, which is not us) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False
