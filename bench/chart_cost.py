"""A chart of where a batch run's CPU goes, for several runs of ``bench.cost_breakdown``.

Each argument is ``LABEL=PATH`` to a ``cost_breakdown.json`` (copy ``bench/.out``'s after
each run worth keeping); the chart stacks each run's CPU-milliseconds per run by kind of
process, Keel's bar beside LangGraph's from the same run, so a change shows as a shorter
bar and the part of it that moved:

    python -m bench.chart_cost --out docs/img/batch-cpu-per-run.png \\
        "as it was=before.json" "async model step=after.json"

Needs the ``charts`` extra (matplotlib).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

# Processes grouped as the docs' tables group them, in stacking order.
GROUPS: list[tuple[str, tuple[str, ...], str]] = [
    ("orchestrator", ("orchestrator",), "#4c72b0"),
    ("router replica", ("router replica",), "#dd8452"),
    ("planners", ("planner",), "#55a868"),
    ("Ray task workers", ("Ray workers",), "#c44e52"),
    ("executors", ("executor",), "#8172b3"),
    ("driver (keel batch)", ("driver",), "#937860"),
    ("Ray and Serve daemons", ("GCS", "raylet", "Ray ", "Serve"), "#da8bc3"),
    ("other", ("",), "#8c8c8c"),
]
LANGGRAPH = ("LangGraph process", "#2f4b7c")


def by_group(rows: list[dict[str, Any]], system: str) -> dict[str, float]:
    """CPU-ms a run per group; the model server (not Keel's, nor LangGraph's) is left out."""
    out = {name: 0.0 for name, _, _ in GROUPS}
    for row in rows:
        if row["system"] != system or row["process"].startswith("model server"):
            continue
        name = next(n for n, prefixes, _ in GROUPS if row["process"].startswith(prefixes))
        out[name] += float(row["cpu_ms_per_run"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("runs", nargs="+", metavar="LABEL=PATH")
    p.add_argument("--out", type=Path, default=Path("bench/.out/batch-cpu-per-run.png"))
    args = p.parse_args(argv)
    import matplotlib  # noqa: PLC0415 - optional dependency (the charts extra)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    labels, keel, langgraph = [], [], []
    for arg in args.runs:
        label, sep, path = arg.partition("=")
        if not sep:
            p.error(f"{arg!r}: expected LABEL=PATH")
        rows = json.loads(Path(path).read_text())["rows"]
        labels.append(label)
        keel.append(by_group(rows, "keel"))
        langgraph.append(sum(r["cpu_ms_per_run"] for r in rows if r["process"] == LANGGRAPH[0]))
    fig, ax = plt.subplots(figsize=(9, 1.0 + 0.9 * len(labels)))
    ys = list(range(len(labels)))[::-1]
    left = [0.0] * len(labels)
    for name, _, colour in GROUPS:
        widths = [k[name] for k in keel]
        ax.barh([y + 0.2 for y in ys], widths, left=left, height=0.38, label=name, color=colour)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    for y, total in zip(ys, left, strict=True):
        ax.text(total + 0.5, y + 0.2, f"Keel {total:.1f}", va="center", fontsize=8)
    ax.barh([y - 0.2 for y in ys], langgraph, height=0.38, label="LangGraph", color=LANGGRAPH[1])
    for y, total in zip(ys, langgraph, strict=True):
        ax.text(total + 0.5, y - 0.2, f"LangGraph {total:.1f}", va="center", fontsize=8)
    ax.set_yticks(ys, labels)
    ax.set_xlabel("CPU-milliseconds per run (all processes), 150 runs, 48 in flight")
    ax.set_title("Where a batch run's CPU goes: Keel beside LangGraph, each from the same run")
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    ax.set_xlim(0, max(left + langgraph) * 1.25)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    plt.close(fig)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
