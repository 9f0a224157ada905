"""CPU time by process, for cost breakdowns: every process on the machine is read from
/proc at the start and the end of a measured stretch (and every half second between, so
processes that end inside it still count), and grouped by what it is in a Keel
deployment (the driver, the orchestrator, node tasks, each worker role, Serve's replicas
and proxy, Ray's own daemons, the model server).

Linux only; it sees what the machine runs, so a benchmark using it should run alone.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

_HZ = os.sysconf("SC_CLK_TCK")
# (what the command line contains, the group), first match wins.
GROUPS = (
    ("ray::OrchestratorActor", "orchestrator"),
    ("ray::keel:", "node tasks"),
    ("ray::PlannerWorker", "planner workers"),
    ("ray::ExecutorWorker", "executor workers"),
    ("ray::RetrieverWorker", "retriever workers"),
    ("ray::ValidatorWorker", "validator workers"),
    ("ray::ServeReplica:keel-router", "router replica (Serve)"),
    ("ray::ServeReplica", "other Serve replicas"),
    ("ray::ProxyActor", "Serve HTTP proxy"),
    ("ray::ServeController", "Serve controller"),
    ("ray::IDLE", "Ray workers starting or idle"),
    ("raylet", "raylet"),
    ("gcs_server", "GCS"),
    ("dashboard", "Ray dashboard and agents"),
    ("ray::DashboardAgent", "Ray dashboard and agents"),
    ("ray::RuntimeEnvAgent", "Ray dashboard and agents"),
    ("log_monitor", "Ray log and autoscaler monitors"),
    ("autoscaler", "Ray log and autoscaler monitors"),
    ("keel.testing.scripted", "model server (scripted, not Keel)"),
)


def group_of(cmdline: str, me: int = -1, pid: int = -2) -> str:
    if pid == me:
        return "driver (keel batch)"
    for needle, group in GROUPS:
        if needle in cmdline:
            return group
    return "other"


def _snapshot() -> dict[int, tuple[float, str]]:
    """Every live process: its CPU seconds so far (user + system) and its command line."""
    out: dict[int, tuple[float, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[int(entry.name)] = ((int(fields[11]) + int(fields[12])) / _HZ, cmd)
    return out


def processes() -> dict[int, str]:
    """Every live process's command line, by pid."""
    return {pid: cmd for pid, (_, cmd) in _snapshot().items()}


class CpuSampler:
    """``with CpuSampler() as cpu: ...`` then ``cpu.by_group``: CPU-seconds each group
    used inside the block (a process that ended between samples loses its last half
    second at most)."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.by_group: dict[str, float] = {}
        self._first: dict[int, float] = {}
        self._last: dict[int, tuple[float, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> CpuSampler:
        start = _snapshot()
        self._first = {pid: cpu for pid, (cpu, _) in start.items()}
        self._last = dict(start)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._last.update(_snapshot())

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._last.update(_snapshot())
        me = os.getpid()
        totals: dict[str, float] = {}
        for pid, (cpu, cmd) in self._last.items():
            used = cpu - self._first.get(pid, 0.0)
            if used > 0:
                group = group_of(cmd, me, pid)
                totals[group] = totals.get(group, 0.0) + used
        self.by_group = dict(sorted(totals.items(), key=lambda kv: -kv[1]))
