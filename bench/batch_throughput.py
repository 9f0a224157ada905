"""Batch throughput on a multi-node cluster: Keel at 1, 2 and 3 nodes beside LangGraph in
one process, the same workload, a model that takes 50 ms.

The workload is one agent job: classify a ticket with a model (through the worker pool,
the Serve router and litellm, to the scripted OpenAI-compatible server on 127.0.0.1, which
answers after 50 ms), then deliver one message exactly once (an outbox effect). Keel runs
it on a local multi-node Ray cluster (``bench.local_cluster``; head plus 0, 1 or 2 worker
nodes), checkpointing every step to a local directory (fsynced, as LangGraph's SQLite
commits are); LangGraph runs the same two steps (litellm to the same server, the same
outbox tool) with its SQLite checkpointer, with as many runs in flight as Keel's batch.

    python -m bench.batch_throughput --runs 150 --concurrency 48

Results are printed and written to ``bench/.out/batch_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypedDict

import httpx
import litellm
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from bench import measure_in_process, report
from bench.cpu_profile import CpuSampler, processes
from keel.actors.worker_messages import ClassifyRequest
from keel.actors.workers import workers
from keel.batch import Batch, Task
from keel.client import Keel
from keel.config import KeelConfig
from keel.core.events import EffectResult, ModelCalled, NodeCompleted
from keel.core.nodes import NodeContext, NodeOutput, RetryPolicy
from keel.core.workflow import END, Workflow
from keel.examples import demo_service
from keel.examples.outbox import OutboxTool
from keel.testing.scripted import launch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / ".out"
LATENCY_S = 0.05
LABELS = ["bad_config", "overload", "data_corruption"]
console = Console()


# -- the workload, as a Keel workflow (importable as bench.batch_throughput:workflow) --------
class JobInputs(BaseModel):
    outbox: str


class JobState(BaseModel):
    label: str = ""
    delivery: dict[str, Any] = {}


# ``classify`` is an async node: it only awaits the planner, so it runs on the orchestrator's
# event loop and costs no Ray task. ``--task-node`` runs the same step as a Ray task.
async def classify(state: JobState, ctx: NodeContext) -> Any:
    resp = await workers(ctx).planner.aclassify(ClassifyRequest(text=ctx.goal, labels=LABELS))
    return NodeOutput(updates={"label": resp.label}, calls=resp.calls, worker=resp.worker)


def classify_on_task(state: JobState, ctx: NodeContext) -> Any:
    resp = workers(ctx).planner.classify(ClassifyRequest(text=ctx.goal, labels=LABELS))
    return NodeOutput(updates={"label": resp.label}, calls=resp.calls, worker=resp.worker)


def deliver(state: JobState, ctx: NodeContext) -> dict[str, Any]:
    return {"outbox": ctx.inputs["outbox"], "to": "on-call", "body": f"{state.label}: {ctx.goal}"}


def job(name: str, classify_fn: Any) -> Workflow:
    wf = Workflow(name, state=JobState, inputs=JobInputs, uses_models=True)
    wf.node("classify", retry=RetryPolicy(attempts=3, backoff_s=0.1), timeout_s=60)(classify_fn)
    wf.edge("classify", "deliver")
    wf.effect(OutboxTool("notes"), "deliver", role="mitigate", result_field="delivery")(deliver)
    wf.edge("deliver", END)
    return wf


workflow = job("bench-job", classify)
task_workflow = job("bench-job-task", classify_on_task)


# -- helpers -------------------------------------------------------------------------------
def start_scripted() -> tuple[Any, str]:

    proc, base = launch()
    for model in ("small-model", "large-model"):
        httpx.post(
            f"{base}/_script",
            json={"model": model, "reply": '{"label": "bad_config"}', "delay_s": LATENCY_S},
        ).raise_for_status()
    return proc, base


def router_config(base: str, http_port: int) -> dict[str, Any]:
    return {
        "http_port": http_port,
        "tiers": [
            {
                "name": "small",
                "model": "openai/small-model",
                "api_base": f"{base}/v1",
                "max_score": 0.45,
            },
            {
                "name": "large",
                "model": "openai/large-model",
                "api_base": f"{base}/v1",
                "max_score": 1.0,
            },
        ],
    }


def tasks(n: int, outbox: Path, tag: str, task_node: bool = False) -> list[Any]:

    return [
        Task(
            id=f"{tag}-{i:04d}",
            workflow=f"bench.batch_throughput:{'task_workflow' if task_node else 'workflow'}",
            goal=f"ticket {i}: checkout fails after a config change",
            inputs={"outbox": str(outbox)},
        )
        for i in range(n)
    ]


# -- Keel on a cluster of N nodes ------------------------------------------------------------
def measure_keel(
    address: str,
    base: str,
    runs: int,
    concurrency: int,
    workdir: Path,
    profile: bool = False,
    task_node: bool = False,
    nodes: int = 1,
    fsync: bool = True,
    shards: int = 1,
) -> dict[str, Any]:
    """In a process of its own (one Ray cluster per driver): warm up, then time a batch
    (with ``profile``, also the CPU time of every process during it, the wall-clock path
    of its runs, and a flame graph of the orchestrator)."""

    config = KeelConfig.model_validate(
        {
            # fsync as LangGraph's SQLite does (WAL, synchronous=FULL: each commit synced).
            "storage": {"url": str(workdir / "store"), "fsync": fsync},
            "sandbox": {"roots": [str(workdir)]},  # the outbox lies here
            "ray": {"address": address},
            "orchestrator": {"node_num_cpus": 0.25, "shards": shards},
            "workers": {"planner": 4, "executor": 4},
            "router": {
                **router_config(base, demo_service.free_port()),
                # One router replica per node, as a deployment that scales out runs it.
                "replicas": {"min_replicas": nodes, "max_replicas": nodes},
            },
        }
    )
    keel = Keel(config)
    keel.connect()
    warm = Batch(
        keel,
        tasks(8, workdir / "outbox", "warm", task_node),
        concurrency=8,
        results=workdir / "w.jsonl",
    )
    warm.run()
    batch = Batch(
        keel,
        tasks(runs, workdir / "outbox", "job", task_node),
        concurrency=concurrency,
        results=workdir / "r.jsonl",
    )
    if profile:
        return profiled(keel, batch, runs, workdir)
    t0 = time.perf_counter()
    results = batch.run()
    elapsed = time.perf_counter() - t0
    ok = sum(r.status == "succeeded" for r in results)
    delivered = len(list((workdir / "outbox").glob("*.json"))) - 8  # less the warm-up
    return {"runs": runs, "succeeded": ok, "seconds": round(elapsed, 3), "deliveries": delivered}


def profiled(keel: Keel, batch: Batch, runs: int, workdir: Path) -> dict[str, Any]:
    """The batch with every process's CPU time sampled and the orchestrator under py-spy."""
    target = os.environ.get("KEEL_BENCH_FLAME", "ray::OrchestratorActor")
    orch = next((pid for pid, cmd in processes().items() if cmd.startswith(target)), None)
    svg = OUT / os.environ.get("KEEL_BENCH_FLAME_FILE", "orchestrator-flame.svg")
    OUT.mkdir(parents=True, exist_ok=True)
    spy = None
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if orch is not None and py_spy:
        spy = subprocess.Popen(
            [py_spy, "record", "--pid", str(orch), "--rate", "50", "--nonblocking",
             "-o", str(svg), *(["-f", "raw"] if svg.suffix == ".txt" else []),
             *(["--gil"] if os.environ.get("KEEL_BENCH_FLAME_GIL") else [])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
    with CpuSampler() as cpu:
        t0 = time.perf_counter()
        results = batch.run()
        elapsed = time.perf_counter() - t0
    if spy is not None:
        spy.send_signal(signal.SIGINT)  # py-spy writes its graph on interrupt
        spy.wait(timeout=120)
    ok = [r for r in results if r.status == "succeeded"]
    return {
        "runs": runs,
        "succeeded": len(ok),
        "seconds": round(elapsed, 3),
        "cpu_s": {k: round(v, 2) for k, v in cpu.by_group.items()},
        "path": path_of_runs(keel, [r.run_id for r in ok]),
        "flame": str(svg) if svg.exists() else None,
    }


def path_of_runs(keel: Keel, run_ids: list[str]) -> dict[str, float]:
    """Where one run's wall-clock time goes, the median over ``run_ids``, from the ledger:
    the model call, the tool's effect, the rest of each node, and what lies between nodes
    (checkpoint commits, scheduling, waiting for a slot)."""
    parts: dict[str, list[float]] = {}
    for run_id in run_ids:
        events = keel.show(run_id).events
        total = events[-1].ts - events[0].ts
        nodes = sum(e.duration_s for e in events if isinstance(e, NodeCompleted))
        model = sum(e.latency_s for e in events if isinstance(e, ModelCalled))
        effect = sum(e.duration_s for e in events if isinstance(e, EffectResult))
        for name, value in (
            ("whole run", total),
            ("model call", model),
            ("tool effect", effect),
            ("rest of the nodes", nodes - model - effect),
            ("between nodes", total - nodes),
        ):
            parts.setdefault(name, []).append(value)
    return {k: round(statistics.median(v) * 1000, 1) for k, v in parts.items()}


def cores_for(nodes: int) -> set[int]:
    """The first ``nodes`` cores this process may use: one per pinned node."""
    cores = sorted(os.sched_getaffinity(0))
    if nodes > len(cores):
        raise SystemExit(f"--pin needs a core per node: {nodes} nodes, {len(cores)} cores")
    return set(cores[:nodes])


def keel_on_nodes(
    nodes: int,
    base: str,
    runs: int,
    concurrency: int,
    *,
    profile: bool = False,
    pin: bool = False,
    task_node: bool = False,
    fsync: bool = True,
    shard_per_node: bool = False,
) -> dict[str, Any]:
    """Keel on a fresh local cluster of ``nodes`` nodes; with ``pin``, node *i* and its
    processes on core *i* alone, and the driver (``keel batch``) on those cores."""
    cores = cores_for(nodes) if pin else None
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "cluster"
        cluster = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.local_cluster",
                "--workers",
                str(nodes - 1),
                "--head-cpus",
                "2",
                "--worker-cpus",
                "2",
                "--state",
                str(state),
                *(["--pin"] if pin else []),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 180
            while not (state / "address").exists():
                if cluster.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the local cluster did not start")
                time.sleep(0.2)
            result = measure_in_process(
                [
                    "bench.batch_throughput",
                    "--measure",
                    (state / "address").read_text(),
                    "--base",
                    base,
                    "--runs",
                    str(runs),
                    "--concurrency",
                    str(concurrency),
                    "--workdir",
                    tmp,
                    *(["--profile"] if profile else []),
                    *(["--task-node"] if task_node else []),
                    "--nodes",
                    str(nodes),
                    *([] if fsync else ["--no-fsync"]),
                    *(["--shard-per-node"] if shard_per_node else []),
                ],
                timeout=900,
                preexec_fn=None if cores is None else lambda: os.sched_setaffinity(0, cores),
            )
        finally:
            (state / "stop").touch()
            cluster.wait(timeout=120)
    result["nodes"] = nodes
    result["runs_per_min"] = round(result["succeeded"] / result["seconds"] * 60, 1)
    return result


# -- LangGraph, one process ------------------------------------------------------------------
class LGState(TypedDict, total=False):
    job: str
    goal: str
    label: str
    delivery: dict[str, Any]


def langgraph(
    base: str, runs: int, concurrency: int, cores: set[int] | None = None
) -> dict[str, Any]:
    """LangGraph in this process; with ``cores``, its threads on those cores only."""
    everywhere = os.sched_getaffinity(0)
    if cores is not None:
        os.sched_setaffinity(0, cores)  # the pool's threads, started below, inherit it
    try:
        return _langgraph(base, runs, concurrency)
    finally:
        os.sched_setaffinity(0, everywhere)


def _langgraph(base: str, runs: int, concurrency: int) -> dict[str, Any]:
    from langgraph.checkpoint.sqlite import SqliteSaver  # noqa: PLC0415
    from langgraph.graph import END as LG_END  # noqa: PLC0415
    from langgraph.graph import StateGraph  # noqa: PLC0415

    outbox_tool = OutboxTool("notes")
    with tempfile.TemporaryDirectory() as tmp:
        outbox = Path(tmp) / "outbox"

        def classify_node(state: LGState) -> LGState:
            resp = litellm.completion(
                model="openai/small-model",
                api_base=f"{base}/v1",
                api_key="keel-local",
                messages=[
                    {
                        "role": "user",
                        "content": json.dumps({"goal": state["goal"], "labels": LABELS}),
                    }
                ],
                max_tokens=48,
            )
            label = json.loads(resp.choices[0].message.content)["label"]
            return {"label": label}

        def deliver_node(state: LGState) -> LGState:
            key = f"{state['job']}/deliver"
            args = {
                "outbox": str(outbox),
                "to": "on-call",
                "body": f"{state['label']}: {state['goal']}",
            }
            return {"delivery": outbox_tool.apply(args, key)}  # type: ignore[typeddict-item]

        g = StateGraph(LGState)
        g.add_node("classify", classify_node)
        g.add_node("deliver", deliver_node)
        g.set_entry_point("classify")
        g.add_edge("classify", "deliver")
        g.add_edge("deliver", LG_END)
        conn = sqlite3.connect(Path(tmp) / "lg.db", check_same_thread=False)
        graph = g.compile(checkpointer=SqliteSaver(conn))

        def one(i: int) -> bool:
            out = graph.invoke(
                {"job": f"job-{i}", "goal": f"ticket {i}: checkout fails after a config change"},
                {"configurable": {"thread_id": f"job-{i}"}},
                durability="sync",
            )
            return bool(out.get("delivery"))

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(8)))  # warm up
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            ok = sum(pool.map(one, range(100, 100 + runs)))
        elapsed = time.perf_counter() - t0
        conn.close()
        return {
            "runs": runs,
            "succeeded": ok,
            "seconds": round(elapsed, 3),
            "runs_per_min": round(ok / elapsed * 60, 1),
            "deliveries": len(list(outbox.glob("*.json"))) - 8,
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="batch throughput, Keel on 1-3 nodes vs LangGraph")
    p.add_argument("--runs", type=int, default=150)
    p.add_argument("--concurrency", type=int, default=48)
    p.add_argument("--nodes", help="node counts to measure (default 1,2,3; 1,2 with --pin)")
    p.add_argument(
        "--pin",
        action="store_true",
        help="each node on a core of its own, LangGraph on as many cores (scale-out)",
    )
    p.add_argument("--measure", metavar="ADDRESS", help=argparse.SUPPRESS)
    p.add_argument("--base", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--task-node", action="store_true", help="run the model step as a Ray task, not async"
    )
    p.add_argument(
        "--no-fsync", action="store_true", help="Keel's checkpoints not fsynced (LangGraph's are)"
    )
    p.add_argument(
        "--shard-per-node",
        action="store_true",
        help="one orchestrator per node (orchestrator.shards = nodes), not one in all",
    )
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.measure:
        result = measure_keel(
            args.measure,
            args.base,
            args.runs,
            args.concurrency,
            Path(args.workdir),
            args.profile,
            args.task_node,
            int(args.nodes or 1),
            not args.no_fsync,
            int(args.nodes or 1) if args.shard_per_node else 1,
        )
        report(result)
        return 0
    counts = [int(x) for x in (args.nodes or ("1,2" if args.pin else "1,2,3")).split(",")]
    if args.pin:
        for n in counts:
            cores_for(n)  # refuse before starting anything
    scripted, base = start_scripted()
    try:
        rows: list[dict[str, Any]] = []
        for n in counts:
            where = f"{n} core(s), pinned" if args.pin else "unpinned"
            console.print(
                f"Keel on {n} node(s), {where}: {args.runs} runs, {args.concurrency} in flight ..."
            )
            rows.append(
                {
                    "system": f"keel, {n} node(s)",
                    "cores": n if args.pin else len(os.sched_getaffinity(0)),
                    "orchestrators": n if args.shard_per_node else 1,
                    **keel_on_nodes(
                        n,
                        base,
                        args.runs,
                        args.concurrency,
                        pin=args.pin,
                        task_node=args.task_node,
                        fsync=not args.no_fsync,
                        shard_per_node=args.shard_per_node,
                    ),
                }
            )
        for n in sorted(set(counts)) if args.pin else [0]:
            console.print(f"LangGraph, one process{f', {n} core(s)' if n else ''} ...")
            rows.append(
                {
                    "system": "langgraph, 1 process",
                    "cores": n or len(os.sched_getaffinity(0)),
                    "nodes": 1,
                    **langgraph(base, args.runs, args.concurrency, cores_for(n) if n else None),
                }
            )
    finally:
        scripted.terminate()
        scripted.wait(timeout=10)
    print_rows(rows, pinned=args.pin)
    OUT.mkdir(parents=True, exist_ok=True)
    name = "batch_throughput_pinned.json" if args.pin else "batch_throughput.json"
    (OUT / name).write_text(
        json.dumps(
            {
                "latency_s": LATENCY_S,
                "concurrency": args.concurrency,
                "pinned": args.pin,
                "rows": rows,
            },
            indent=2,
        )
    )
    return 0


def print_rows(rows: list[dict[str, Any]], *, pinned: bool) -> None:
    """One table: each row against LangGraph on the same cores, and Keel against itself on
    its fewest nodes (the scale-out)."""
    lg = {r["cores"]: r for r in rows if r["system"].startswith("langgraph")}
    base = next(r for r in rows if r["system"].startswith("keel"))
    title = f"batch throughput, model latency {LATENCY_S * 1000:.0f} ms"
    table = Table(title=title + (", each node on its own core" if pinned else ""))
    cols = ("system", "cores", "runs", "succeeded", "seconds", "runs/min", "vs LangGraph")
    for col in (*cols, "vs fewest nodes", "deliveries"):
        table.add_column(col, justify="right")
    for r in rows:
        peer = lg.get(r["cores"]) or next(iter(lg.values()))
        ratio = r["runs_per_min"] / peer["runs_per_min"] if peer["runs_per_min"] else 0.0
        r["ratio_vs_langgraph"] = round(ratio, 3)
        keel = r["system"].startswith("keel")
        if keel:
            r["speedup"] = round(r["runs_per_min"] / base["runs_per_min"], 3)
        table.add_row(
            r["system"],
            str(r["cores"]),
            str(r["runs"]),
            str(r["succeeded"]),
            f"{r['seconds']:.1f}",
            f"{r['runs_per_min']:.0f}",
            f"{ratio:.2f}x",
            f"{r['speedup']:.2f}x" if keel else "",
            str(r["deliveries"]),
        )
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
