"""What a plain node costs on a Ray task beside a call to a long-lived actor that runs it.

The engine in this process (as the orchestrator runs it), 20 plain no-op nodes a run,
fsynced checkpoints; the same nodes three ways, run by run in turn so all see the same
machine: on the engine's own threads (``inline``), on a Ray task each (what Keel does),
and as a call to one of two threaded "node host" actors (a design Keel does not use: it
is here to measure what it would save); LangGraph's chain of as many nodes with its
SQLite checkpointer (``durability="sync"``) in the same rounds::

    python -m bench.node_hosts --runs 12

Results are printed and written to ``bench/.out/node_hosts.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
from pathlib import Path
from typing import Any

import ray
from pydantic import BaseModel

from bench import write_results
from bench.orchestration import chain20_inline, chain20_tasks, keel_engine_run, langgraph_chain
from keel.actors.runner import RayNodeRunner
from keel.core.nodes import Node, NodeContext
from keel.runtime.inline import InlineNodeRunner, invoke_node

NODES = 20


@ray.remote(num_cpus=0, max_concurrency=16)
class NodeHost:
    def run(self, fn: Any, state: BaseModel, ctx: NodeContext) -> Any:
        return invoke_node(fn, state, ctx)


class HostRunner(RayNodeRunner):
    """Plain nodes as calls to node-host actors, in turn (a timeout cannot stop one)."""

    def __init__(self, hosts: list[Any]) -> None:
        super().__init__(0.25)
        self.hosts, self.n = hosts, 0

    async def run_node(self, node: Node, state: BaseModel, ctx: NodeContext) -> Any:
        self.n += 1
        host = self.hosts[self.n % len(self.hosts)]
        return await asyncio.wait_for(host.run.remote(node.fn, state, ctx), node.timeout_s)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="plain nodes: Ray task vs node-host actor")
    p.add_argument("--runs", type=int, default=12)
    args = p.parse_args(argv)
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    hosts = [NodeHost.remote() for _ in range(2)]  # type: ignore[attr-defined]
    ray.get([h.__ray_ready__.remote() for h in hosts])
    ways = {
        "inline (engine's threads)": (chain20_inline, InlineNodeRunner()),
        "Ray task per node (Keel)": (chain20_tasks, RayNodeRunner(0.25)),
        "call to a node-host actor": (chain20_tasks, HostRunner(hosts)),
    }
    times: dict[str, list[float]] = {k: [] for k in ways}
    for i in range(args.runs + 2):
        for name, (wf, runner) in ways.items():
            with tempfile.TemporaryDirectory() as tmp:
                t = asyncio.run(keel_engine_run(wf, Path(tmp), runner=runner)) / NODES
            if i >= 2:  # the first two warm workers and imports
                times[name].append(t)
        times.setdefault("LangGraph, SqliteSaver, sync", []).extend(
            langgraph_chain(1, NODES) if i >= 2 else []
        )
    ray.shutdown()
    p50 = {k: statistics.median(v) * 1000 for k, v in times.items()}
    base = p50["LangGraph, SqliteSaver, sync"]
    for name, ms in p50.items():
        print(f"{name:30} p50 {ms:.3f} ms/node  {ms / base:.2f}x LangGraph")
    write_results("node_hosts", {"runs": args.runs, "p50_ms_per_node": p50})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
