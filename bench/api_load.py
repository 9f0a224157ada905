"""A bounded load test of the runs API on loopback: N run submissions at concurrency C.

``python -m bench.api_load --runs 2000 --concurrency 32``. Starts a local Ray instance,
the runs API on Serve (127.0.0.1), submits the bundled ``demo`` workflow (local effects,
no model), then waits until every accepted run id is terminal. Reports errors, lost runs,
submission latency p50/p99, and the CPU each process spent per submission while they were
made (the runs already accepted execute on the same cores meanwhile), and writes
``bench/.out/api_load.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
import time
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import httpx
import ray
from ray import serve
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench import write_results
from bench.cpu_profile import CpuSampler
from keel.client import Keel
from keel.config import KeelConfig, StorageConfig
from keel.server.runs_api import deploy_runs_api, hash_key

console = Console()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


async def load(runs: int, concurrency: int, port: int, outbox: str) -> dict[str, Any]:

    url = f"http://127.0.0.1:{port}/v1/runs"
    headers = {"Authorization": "Bearer bench-key"}
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    errors: list[str] = []
    ids: list[str] = []
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def submit(i: int, progress: Any, task: Any) -> None:
            body = {
                "workflow": "demo",
                "goal": f"ticket {i}: checkout is down",
                "inputs": {"outbox": outbox},
            }
            async with sem:
                t0 = time.perf_counter()
                try:
                    resp = await client.post(url, json=body, headers=headers)
                    if resp.status_code == 201:
                        ids.append(resp.json()["run_id"])
                    else:
                        errors.append(f"{resp.status_code} {resp.text[:100]}")
                except httpx.HTTPError as exc:
                    errors.append(type(exc).__name__)
                latencies.append(time.perf_counter() - t0)
                progress.advance(task)

        started = time.perf_counter()
        with Progress(console=console) as progress:
            task = progress.add_task("submitting", total=runs)
            await asyncio.gather(*(submit(i, progress, task) for i in range(runs)))
        submit_s = time.perf_counter() - started
    return {
        "runs": runs,
        "concurrency": concurrency,
        "accepted": len(ids),
        "errors": errors[:20],
        "error_count": len(errors),
        "submit_s": submit_s,
        "p50_ms": pct(latencies, 0.5),
        "p99_ms": pct(latencies, 0.99),
        "ids": ids,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="bounded load test of the runs API")
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="keel-load-")
    config = KeelConfig(storage=StorageConfig(url=f"{tmp}/store", fsync=True))
    ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
    port = 18500 + os.getpid() % 1000
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    deploy_runs_api(config.model_dump(mode="json"), {hash_key("bench-key"): "alice"})
    # Under the store: where the default tool roots let a tool write.
    outbox = f"{tmp}/store/outbox"
    asyncio.run(load(min(40, args.runs), 8, port, outbox))  # warm: replicas, workers, imports
    with CpuSampler() as cpu:
        result = asyncio.run(load(args.runs, args.concurrency, port, outbox))
    result["cpu_ms_per_submission"] = {
        group.replace("driver (keel batch)", "load client (this process)"): 1000 * s / args.runs
        for group, s in cpu.by_group.items()
    }

    keel = Keel(config)
    deadline = time.monotonic() + 900
    pending = set(result["ids"])
    with console.status("waiting for every accepted run to finish"):
        while pending and time.monotonic() < deadline:
            statuses = {r.run_id: r.status for r in keel.runs()}
            pending = {i for i in pending if statuses.get(i) in (None, "running")}
            time.sleep(1)
    done = {r.run_id: r.status for r in keel.runs()}
    result["terminal"] = sum(1 for i in result["ids"] if done.get(i) not in (None, "running"))
    result["succeeded"] = sum(1 for i in result["ids"] if done.get(i) == "succeeded")
    result["lost"] = len(result["ids"]) - result["terminal"]
    del result["ids"]
    console.print(
        f"{result['accepted']}/{result['runs']} accepted, {result['error_count']} errors, "
        f"{result['terminal']} terminal ({result['succeeded']} succeeded), {result['lost']} lost; "
        f"submission p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
        f"{result['runs'] / result['submit_s']:.0f} submissions/s"
    )
    table = Table(title="CPU per submission, by process (ms)")
    table.add_column("process")
    table.add_column("CPU ms", justify="right")
    for group, ms in result["cpu_ms_per_submission"].items():
        table.add_row(group, f"{ms:.1f}")
    total = sum(result["cpu_ms_per_submission"].values())
    table.add_row("all processes", f"{total:.1f}")
    console.print(table)
    write_results("api_load", result)
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
