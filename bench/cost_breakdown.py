"""Where a batch agent job's cost goes: CPU-seconds per run for each kind of process,
Keel (one node) beside LangGraph (one process) on the same workload, the wall-clock path
of one Keel run from its ledger, and a flame graph of the orchestrator.

The workload is bench.batch_throughput's (classify through the router to a model that
answers in 50 ms, then one exactly-once delivery). Every process on the machine is
sampled from /proc during the timed batch only (bench.cpu_profile), so run it alone.

    python -m bench.cost_breakdown --runs 150 --concurrency 48

Writes ``bench/.out/cost_breakdown.json`` and, when py-spy is installed,
``bench/.out/orchestrator-flame.svg``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.batch_throughput import OUT, keel_on_nodes, langgraph, start_scripted
from bench.cpu_profile import CpuSampler, group_of, processes

console = Console()


def ray_gone(timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        names = [group_of(cmd) for cmd in processes().values()]
        if not any(n.startswith(("Ray", "raylet", "GCS", "Serve")) for n in names):
            return
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="CPU per run by process, Keel vs LangGraph")
    p.add_argument("--runs", type=int, default=150)
    p.add_argument("--concurrency", type=int, default=48)
    p.add_argument(
        "--task-node", action="store_true", help="run the model step as a Ray task, not async"
    )
    p.add_argument(
        "--flame",
        default="ray::OrchestratorActor",
        help="the process (title prefix) py-spy records, e.g. ray::ServeReplica:keel-router",
    )
    p.add_argument(
        "--flame-file",
        default="orchestrator-flame.svg",
        help="its name under bench/.out (a .txt name gets py-spy's raw collapsed stacks)",
    )
    p.add_argument(
        "--no-fsync", action="store_true", help="Keel's checkpoints not fsynced (LangGraph's are)"
    )
    p.add_argument(
        "--gil", action="store_true", help="sample only threads holding the GIL (Python's CPU)"
    )
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    scripted, base = start_scripted()
    try:
        console.print(f"Keel on 1 node, profiled: {args.runs} runs ...")
        os.environ["KEEL_BENCH_FLAME"] = args.flame  # read by the measuring process
        os.environ["KEEL_BENCH_FLAME_FILE"] = args.flame_file
        if args.gil:
            os.environ["KEEL_BENCH_FLAME_GIL"] = "1"
        keel = keel_on_nodes(
            1,
            base,
            args.runs,
            args.concurrency,
            profile=True,
            task_node=args.task_node,
            fsync=not args.no_fsync,
        )
        ray_gone()  # the cluster's processes exit first: their CPU is not LangGraph's
        console.print("LangGraph, one process, profiled ...")
        with CpuSampler() as cpu:
            lg = langgraph(base, args.runs, args.concurrency)
    finally:
        scripted.terminate()
        scripted.wait(timeout=10)
    lg_cpu = {
        k.replace("driver (keel batch)", "LangGraph process"): v for k, v in cpu.by_group.items()
    }
    rows: list[dict[str, Any]] = []
    for system, result, groups in (("keel", keel, keel["cpu_s"]), ("langgraph", lg, lg_cpu)):
        n = max(1, result["succeeded"])
        for group, seconds in groups.items():
            rows.append({"system": system, "process": group, "cpu_ms_per_run": seconds / n * 1000})
    table = Table(title="CPU per run, by process (ms)")
    for col in ("system", "process", "CPU ms / run"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["system"], r["process"], f"{r['cpu_ms_per_run']:.1f}")
    console.print(table)
    for system, result in (("Keel", keel), ("LangGraph", lg)):
        total = sum(r["cpu_ms_per_run"] for r in rows if r["system"] == system.lower())
        rate = result["succeeded"] / result["seconds"] * 60
        console.print(f"{system}: {total:.1f} CPU-ms a run in all, {rate:,.0f} runs/min")
    path = Table(title="one Keel run's wall clock (median, ms)")
    path.add_column("part")
    path.add_column("ms", justify="right")
    for part, ms in keel["path"].items():
        path.add_row(part, f"{ms:.1f}")
    console.print(path)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "cost_breakdown.json").write_text(
        json.dumps({"keel": keel, "langgraph": {**lg, "cpu_s": lg_cpu}, "rows": rows}, indent=2)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
