"""Reading /proc: a process's RSS, the CPU time of the run's processes and of the whole machine,
and the client ends of TCP connections to a local server."""

from __future__ import annotations

import os
import time

from bench.processes import Postgres

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in kB (empty if the process is gone)."""
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    values[key] = int(value.split()[0])
    except OSError:
        pass
    return values


def _stat_fields(pid: int | str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(")") + 2 :].split()


def cpu_ticks(pid: int, reaped_children: bool = False) -> int:
    """utime + stime (+ cutime + cstime: the CPU of its children that have exited and been
    waited for, e.g. PostgreSQL backends whose connection the pool closed)."""
    fields = _stat_fields(pid)
    if not fields:
        return 0
    ticks = int(fields[11]) + int(fields[12])
    return ticks + int(fields[13]) + int(fields[14]) if reaped_children else ticks


def children_of(ppid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(entry)
            if fields and int(fields[1]) == ppid:
                found.append(int(entry))
    return found


def client_ports_to(port: int) -> set[int]:
    """Local ports of ESTABLISHED IPv4 connections whose remote port is ``port`` (from
    /proc/net/tcp): the client ends of connections to one server on this machine."""
    ports: set[int] = set()
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                parts = line.split(None, 4)
                if parts[3] == "01" and int(parts[2].rsplit(":", 1)[1], 16) == port:
                    ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    except (OSError, StopIteration, ValueError, IndexError):
        pass
    return ports


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return sum(parts) - idle, sum(parts)


class CpuMeter:
    """CPU used by the service, PostgreSQL (postmaster + backends), the fake LLM and this
    process (the load generator), and by the whole machine, between start() and stop()."""

    def __init__(self, service_pid: int | None, pg: Postgres, fake_pid: int) -> None:
        self.service_pid, self.pg, self.fake_pid = service_pid, pg, fake_pid

    def _snapshot(self) -> dict[str, int]:
        pg_total = 0
        master = self.pg.postmaster_pid()
        if master:
            pg_total = cpu_ticks(master, reaped_children=True) + sum(
                cpu_ticks(p) for p in children_of(master)
            )
        busy, total = machine_ticks()
        return {
            "service": cpu_ticks(self.service_pid) if self.service_pid else 0,
            "postgres": pg_total,
            "fake_llm": cpu_ticks(self.fake_pid),
            "loadgen": cpu_ticks(os.getpid()),
            "machine_busy": busy,
            "machine_total": total,
            "t": int(time.perf_counter() * 1_000_000),
        }

    def start(self) -> None:
        self._start = self._snapshot()

    def stop(self) -> dict[str, float]:
        end = self._snapshot()
        seconds = (end["t"] - self._start["t"]) / 1e6 or 1e-9
        pct = {
            k: round(100.0 * (end[k] - self._start[k]) / CLK_TCK / seconds, 1)
            for k in ("service", "postgres", "fake_llm", "loadgen")
        }
        total = end["machine_total"] - self._start["machine_total"] or 1
        cores = os.cpu_count() or 1
        pct["machine"] = round(100.0 * cores * (end["machine_busy"] - self._start["machine_busy"])
                               / total, 1)  # fmt: skip
        pct["other"] = round(pct["machine"] - sum(pct[k] for k in
                             ("service", "postgres", "fake_llm", "loadgen")), 1)  # fmt: skip
        return pct  # percent of ONE core (the machine has os.cpu_count() * 100 %)
