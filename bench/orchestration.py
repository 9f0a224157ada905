"""Durable orchestration overhead and checkpoint growth: Keel beside LangGraph.

Run with ``make bench`` (or ``python -m bench.orchestration``). Two measurements, both
with a durable checkpoint after every node:

1. Per-node overhead of a 20-node workflow of no-op nodes: Keel's engine in-process on a
   local directory (fsync on), Keel's orchestrator actor on Ray (nodes inline on its
   threads, ``async def`` nodes on its event loop, and nodes as Ray tasks), and LangGraph
   with its SQLite checkpointer in synchronous durability.
2. Checkpoint bytes stored per node as one run grows to 200 nodes, each node appending a
   256-byte message to a message history.

Results are printed as tables and written to ``bench/.out/orchestration.json``;
``docs/benchmarks.md`` quotes them.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import operator
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Any, TypedDict

import ray
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from bench import write_results
from keel.client import Keel
from keel.config import KeelConfig, OrchestratorConfig, StorageConfig
from keel.core.nodes import NodeContext
from keel.core.state import append
from keel.core.workflow import END, Workflow
from keel.runtime.engine import RunEngine
from keel.runtime.inline import InlineNodeRunner
from keel.storage.local import LocalStore
from keel.storage.runs import RunStore

console = Console()
MESSAGE = "x" * 256


# -- workflows (importable by Ray workers as bench.orchestration:...) ----------------------
class ChainState(BaseModel):
    n: int = 0


def _noop(state: Any, ctx: NodeContext) -> dict[str, Any]:
    return {}


async def _anoop(state: Any, ctx: NodeContext) -> dict[str, Any]:
    return {}


def build_chain(nodes: int, *, inline: bool, on_loop: bool = False) -> Workflow:
    wf = Workflow(f"chain{nodes}", state=ChainState)
    names = [f"n{i:02d}" for i in range(nodes)]
    for name in names:
        wf.node(name, inline=inline)(_anoop if on_loop else _noop)
    for a, b in zip(names, [*names[1:], END], strict=True):
        wf.edge(a, b)
    return wf.validate()


chain20_inline = build_chain(20, inline=True)
chain20_tasks = build_chain(20, inline=False)
chain20_async = build_chain(20, inline=False, on_loop=True)


class GrowState(BaseModel):
    messages: Annotated[list[str], append] = []


grow = Workflow("grow", state=GrowState)


@grow.node(inline=True)
def speak(state: GrowState, ctx: NodeContext) -> dict[str, Any]:
    return {"messages": MESSAGE}


grow.route(
    "speak",
    lambda s: "speak" if len(s.messages) < int(os.environ.get("KEEL_BENCH_GROW", "200")) else END,
    ["speak", END],
)


# -- Keel ---------------------------------------------------------------------------------
class UnfencedStore(LocalStore):
    """The local store as it was before checkpoints were fenced: every write, checkpoints
    included, is temp file + fsync + rename (which replaces), with no directory fsync.
    The baseline that fencing's cost is measured against, in the same run."""

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    create = put


async def keel_engine_run(
    wf: Workflow, root: Path, *, fenced: bool = True, runner: Any = None
) -> float:
    """One run's wall time on the engine in this process (its nodes on ``runner``, the
    engine's own threads by default)."""
    store = RunStore(LocalStore(root, fsync=True) if fenced else UnfencedStore(root))
    engine = RunEngine(store, runner or InlineNodeRunner(), lambda _ref: wf)
    await engine.start()
    t0 = time.perf_counter()
    st = await engine.create("bench", "", {})
    final = await engine.wait(st.run_id, 120)
    elapsed = time.perf_counter() - t0
    assert final.status == "succeeded", final
    await engine.close()
    return elapsed


def keel_engine(runs: int, nodes: int) -> tuple[list[float], list[float]]:
    """Per-node times with fenced checkpoints and with the unfenced baseline, alternating
    run by run so both see the same machine."""
    fenced, unfenced = [], []
    for _ in range(runs):
        for fence, times in ((True, fenced), (False, unfenced)):
            with tempfile.TemporaryDirectory() as tmp:
                elapsed = asyncio.run(keel_engine_run(chain20_inline, Path(tmp), fenced=fence))
                times.append(elapsed / nodes)
    return fenced, unfenced


def keel_ray(runs: int, nodes: int, ref: str) -> list[float]:

    times = []
    with tempfile.TemporaryDirectory() as tmp:
        keel = Keel(
            KeelConfig(
                storage=StorageConfig(url=tmp, fsync=True),
                orchestrator=OrchestratorConfig(name=f"bench-{os.getpid()}"),
            )
        )
        keel.watch(keel.start(ref).run_id)  # warm: actor, workers, imports
        for _ in range(runs):
            t0 = time.perf_counter()
            st = keel.start(ref)
            final = keel.watch(st.run_id)
            times.append((time.perf_counter() - t0) / nodes)
            assert final.status == "succeeded"

        ray.kill(keel.orchestrator(), no_restart=True)
        keel.close()
    return times


def keel_growth(total: int, marks: list[int]) -> dict[int, int]:
    """Bytes of all checkpoint objects after each mark of nodes."""
    os.environ["KEEL_BENCH_GROW"] = str(total)
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(keel_engine_run(grow, Path(tmp)))
        ckpts = sorted((Path(tmp) / "runs").glob("*/checkpoints/*.ckpt"))
        # Checkpoint 0 is creation; checkpoint k holds node k's events.
        sizes = [p.stat().st_size for p in ckpts]
    return {m: sum(sizes[: m + 1]) for m in marks}


# -- LangGraph ----------------------------------------------------------------------------
class LGChainState(TypedDict, total=False):
    n: int


class LGGrowState(TypedDict):
    messages: Annotated[list[str], operator.add]


def _langgraph_chain(nodes: int, saver: Any) -> Any:
    from langgraph.graph import StateGraph  # noqa: PLC0415

    g = StateGraph(LGChainState)
    names = [f"n{i:02d}" for i in range(nodes)]
    for name in names:
        g.add_node(name, lambda s: {})
    g.set_entry_point(names[0])
    for a, b in itertools.pairwise(names):
        g.add_edge(a, b)
    g.set_finish_point(names[-1])
    return g.compile(checkpointer=saver)


def langgraph_chain(runs: int, nodes: int) -> list[float]:
    from langgraph.checkpoint.sqlite import SqliteSaver  # noqa: PLC0415

    times = []
    for i in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            conn = sqlite3.connect(Path(tmp) / "lg.db", check_same_thread=False)
            graph = _langgraph_chain(nodes, SqliteSaver(conn))
            t0 = time.perf_counter()
            graph.invoke({"n": 0}, {"configurable": {"thread_id": f"t{i}"}}, durability="sync")
            times.append((time.perf_counter() - t0) / nodes)
            conn.close()
    return times


def _concat(state: list[str], writes: Sequence[list[str]]) -> list[str]:
    """DeltaChannel's reducer: every batch of writes appended, in order."""
    return [*state, *(m for w in writes for m in w)]


def _delta_state() -> Any:
    """LangGraph's delta-storing channel (beta in 1.2): checkpoints keep a sentinel and
    rebuild the list from the writes, with a full snapshot every 100 updates."""
    from langgraph.channels import DeltaChannel  # noqa: PLC0415  # bench extra only

    # The functional form: its annotation is built here, where DeltaChannel is imported.
    return TypedDict("LGDeltaState", {"messages": Annotated[list[str], DeltaChannel(_concat)]})


def langgraph_growth(total: int, marks: list[int], *, delta: bool = False) -> dict[int, int]:
    from langgraph.checkpoint.sqlite import SqliteSaver  # noqa: PLC0415
    from langgraph.graph import END as LG_END  # noqa: PLC0415
    from langgraph.graph import StateGraph  # noqa: PLC0415

    g = StateGraph(_delta_state() if delta else LGGrowState)
    g.add_node("speak", lambda s: {"messages": [MESSAGE]})
    g.set_entry_point("speak")
    g.add_conditional_edges("speak", lambda s: "speak" if len(s["messages"]) < total else LG_END)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(Path(tmp) / "lg.db", check_same_thread=False)
        graph = g.compile(checkpointer=SqliteSaver(conn))
        graph.invoke(
            {"messages": []},
            {"configurable": {"thread_id": "grow"}, "recursion_limit": total * 2 + 10},
            durability="sync",
        )
        rows = conn.execute(
            "select checkpoint_id, length(checkpoint) + length(metadata) from checkpoints "
            "order by checkpoint_id"
        ).fetchall()
        writes = dict(
            conn.execute(
                "select checkpoint_id, sum(length(value)) from writes group by checkpoint_id"
            ).fetchall()
        )
        # Checkpoint 0 is the input; one more per node step after it.
        sizes = [size + (writes.get(cid) or 0) for cid, size in rows]
        conn.close()
    for m in marks:
        out[m] = sum(sizes[: m + 2])
    return out


# -- report -------------------------------------------------------------------------------
def summarise(times: list[float]) -> dict[str, float]:
    ms = sorted(t * 1000 for t in times)
    return {
        "p50_ms": statistics.median(ms),
        "p90_ms": ms[int(0.9 * (len(ms) - 1))],
        "mean_ms": statistics.fmean(ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--runs", type=int, default=30, help="runs of the 20-node workflow")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray actor variants")
    args = parser.parse_args()
    nodes = 20
    results: dict[str, Any] = {"nodes": nodes, "runs": args.runs, "overhead": {}}

    with console.status("LangGraph + SqliteSaver (sync durability)"):
        results["overhead"]["LangGraph, SqliteSaver, sync"] = summarise(
            langgraph_chain(args.runs, nodes)
        )
    with console.status("Keel engine in-process, local dir, fsync (fenced and not)"):
        fenced, unfenced = keel_engine(args.runs, nodes)
        results["overhead"]["Keel engine, in-process"] = summarise(fenced)
        results["overhead"]["Keel engine, in-process, unfenced baseline"] = summarise(unfenced)
    if not args.no_ray:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        with console.status("Keel orchestrator actor on Ray, inline nodes"):
            results["overhead"]["Keel actor, inline nodes"] = summarise(
                keel_ray(args.runs, nodes, "bench.orchestration:chain20_inline")
            )
        with console.status("Keel orchestrator actor on Ray, async nodes"):
            results["overhead"]["Keel actor, async nodes"] = summarise(
                keel_ray(args.runs, nodes, "bench.orchestration:chain20_async")
            )
        with console.status("Keel orchestrator actor on Ray, nodes as Ray tasks"):
            results["overhead"]["Keel actor, Ray-task nodes"] = summarise(
                keel_ray(args.runs, nodes, "bench.orchestration:chain20_tasks")
            )

    base = results["overhead"]["LangGraph, SqliteSaver, sync"]["p50_ms"]
    table = Table(title=f"Per-node overhead, {nodes}-node no-op workflow, {args.runs} runs")
    for col in ("system", "p50 ms/node", "p90 ms/node", "p50 / LangGraph"):
        table.add_column(col, no_wrap=True)
    for name, row in results["overhead"].items():
        table.add_row(
            name, f"{row['p50_ms']:.3f}", f"{row['p90_ms']:.3f}", f"{row['p50_ms'] / base:.2f}x"
        )
    console.print(table)
    fence = (
        results["overhead"]["Keel engine, in-process"]["p50_ms"]
        / results["overhead"]["Keel engine, in-process, unfenced baseline"]["p50_ms"]
    )
    results["fencing_cost"] = fence
    console.print(f"fenced / unfenced checkpoints, engine in-process, p50: {fence:.2f}x")

    marks = [25, 50, 100, 200]
    with console.status("checkpoint growth to 200 nodes"):
        keel_bytes = keel_growth(200, marks)
        lg_bytes = langgraph_growth(200, marks)
        delta_bytes = langgraph_growth(200, marks, delta=True)
    results["growth"] = {
        "marks": marks,
        "keel": keel_bytes,
        "langgraph": lg_bytes,
        "langgraph_delta_channel": delta_bytes,
        "langgraph_version": version("langgraph"),
    }
    growth = Table(title="Checkpoint bytes stored, 256-byte message appended per node")
    for col in (
        "nodes",
        "Keel total",
        "Keel bytes/node",
        "LangGraph total",
        "LangGraph bytes/node",
        "LangGraph DeltaChannel total",
        "DeltaChannel bytes/node",
    ):
        growth.add_column(col)
    for m in marks:
        growth.add_row(
            str(m),
            f"{keel_bytes[m]:,}",
            f"{keel_bytes[m] / m:,.0f}",
            f"{lg_bytes[m]:,}",
            f"{lg_bytes[m] / m:,.0f}",
            f"{delta_bytes[m]:,}",
            f"{delta_bytes[m] / m:,.0f}",
        )
    console.print(growth)
    console.print(f"LangGraph {version('langgraph')}")

    written = write_results("orchestration", results)
    console.print(f"wrote {written}")


if __name__ == "__main__":
    main()
