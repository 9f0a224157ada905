"""One orchestrator beside two (``orchestrator.shards``) when the orchestrator is the limit.

The workload is all orchestrator work: a chain of 20 inline no-op nodes
(``bench.orchestration:chain20_inline``), each committed durably (fsync) before the next,
as ``keel batch`` runs it with 48 runs in flight, on one local Ray node with 2 CPUs. One
orchestrator is one event loop in one process, so it can use about one core however many
a node has; shards are more processes. Each setting runs in a fresh Ray (a process of its
own), alternating, so both see the same machine:

    python -m bench.orchestrator_shards --runs 200 --rounds 2

Results are printed and written to ``bench/.out/orchestrator_shards.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import measure_in_process, report, write_results
from bench.cpu_profile import CpuSampler
from keel.batch import Batch, Task
from keel.client import Keel
from keel.config import KeelConfig

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = "bench.orchestration:chain20_inline"
console = Console()


def measure(shards: int, runs: int, concurrency: int, fsync: bool) -> dict[str, Any]:
    """In a process of its own: a fresh local Ray, a warm-up batch, then the timed one."""
    with tempfile.TemporaryDirectory() as tmp:
        keel = Keel(
            KeelConfig.model_validate(
                {
                    "storage": {"url": str(Path(tmp) / "store"), "fsync": fsync},
                    "ray": {"num_cpus": 2},
                    "orchestrator": {"name": f"shards-{uuid.uuid4().hex[:6]}", "shards": shards},
                }
            )
        )
        try:
            for i in range(shards):  # every shard up before the clock starts
                keel.orchestrators().at(i)
            warm = [Task(id=f"warm-{i}", workflow=WORKFLOW) for i in range(2 * concurrency)]
            Batch(keel, warm, concurrency=concurrency, results=Path(tmp) / "w.jsonl").run()
            tasks = [Task(id=f"job-{i}", workflow=WORKFLOW) for i in range(runs)]
            batch = Batch(keel, tasks, concurrency=concurrency, results=Path(tmp) / "r.jsonl")
            with CpuSampler() as cpu:
                t0 = time.perf_counter()
                results = batch.run()
                elapsed = time.perf_counter() - t0
        finally:
            keel.close()
    ok = sum(r.status == "succeeded" for r in results)
    # Cores each kind of process kept busy on average through the timed batch.
    cores = {group: round(used / elapsed, 2) for group, used in cpu.by_group.items()}
    return {
        "shards": shards,
        "runs": runs,
        "succeeded": ok,
        "seconds": round(elapsed, 3),
        "cores_busy": cores,
    }


def in_process(shards: int, runs: int, concurrency: int, fsync: bool) -> dict[str, Any]:
    result = measure_in_process(
        [
            "bench.orchestrator_shards",
            "--measure",
            str(shards),
            "--runs",
            str(runs),
            "--concurrency",
            str(concurrency),
            *([] if fsync else ["--no-fsync"]),
        ],
        timeout=900,
    )
    result["runs_per_min"] = round(result["succeeded"] / result["seconds"] * 60, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="one orchestrator beside two, orchestrator-bound")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=48)
    p.add_argument("--rounds", type=int, default=2, help="each setting this many times")
    p.add_argument("--no-fsync", action="store_true", help="checkpoints not fsynced")
    p.add_argument("--measure", type=int, metavar="SHARDS", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.measure:
        report(measure(args.measure, args.runs, args.concurrency, not args.no_fsync))
        return 0
    rows = []
    for r in range(args.rounds):
        for shards in (1, 2):
            console.print(f"round {r + 1}: {shards} orchestrator(s), {args.runs} runs ...")
            rows.append(
                {
                    "round": r + 1,
                    **in_process(shards, args.runs, args.concurrency, not args.no_fsync),
                }
            )
    sync = "no fsync" if args.no_fsync else "fsync"
    table = Table(title=f"keel batch, 20 inline nodes a run, {sync}, 1 node with 2 CPUs")
    columns = ("round", "orchestrators", "runs", "succeeded", "seconds", "runs/min")
    for col in (*columns, "cores busy: orchestrators", "driver"):
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(
            str(row["round"]),
            str(row["shards"]),
            str(row["runs"]),
            str(row["succeeded"]),
            f"{row['seconds']:.1f}",
            f"{row['runs_per_min']:,.0f}",
            f"{row['cores_busy'].get('orchestrator', 0.0):.2f}",
            f"{row['cores_busy'].get('driver (keel batch)', 0.0):.2f}",
        )
    console.print(table)
    rate = {
        n: statistics.median(r["runs_per_min"] for r in rows if r["shards"] == n) for n in (1, 2)
    }
    ratio = rate[2] / rate[1]
    console.print(f"2 orchestrators / 1, median runs/min: {ratio:.2f}x")
    write_results(
        "orchestrator_shards",
        {
            "runs": args.runs,
            "concurrency": args.concurrency,
            "fsync": not args.no_fsync,
            "rows": rows,
            "ratio": ratio,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
