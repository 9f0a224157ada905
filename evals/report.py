"""The evaluation report: JSON for machines, markdown and PNG charts for people.

The markdown's metrics table is written from the same dictionary as the JSON, so the two
cannot disagree; ``read_markdown_metrics`` reads it back to prove it.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from keel.errors import InputError
from keel.evals.layers import CaseResult, ScenarioResult
from keel.evals.metrics import TrajectoryMetrics
from keel.evals.suite import Gate

Direction = Literal["higher", "lower", "neutral"]

# Timings move with the machine's load: shown, compared, never a reason to fail a deploy.
NOISY = ("latency", "duration")


def direction(metric: str) -> Direction:
    """Which way is better for a metric, by its name."""
    if any(w in metric for w in ("accuracy", "recall", "completion", "validity")):
        return "higher"
    if any(w in metric for w in ("safety_violations", "cost", "latency", "steps", "tool_calls")):
        return "lower"
    if "duration" in metric:
        return "lower"
    return "neutral"


class GateResult(BaseModel):
    metric: str
    min: float | None = None
    max: float | None = None
    value: float | None
    ok: bool


class Report(BaseModel):
    suite: str
    created_at: float = Field(default_factory=time.time)
    config: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    gates: list[GateResult] = Field(default_factory=list)
    passed: bool = True
    cases: list[CaseResult] = Field(default_factory=list)
    scenarios: list[ScenarioResult] = Field(default_factory=list)
    duration_s: float = 0.0


def apply_gates(metrics: dict[str, float], gates: dict[str, Gate]) -> list[GateResult]:
    out = []
    for name, gate in gates.items():
        value = metrics.get(name)
        ok = value is not None
        if value is not None and gate.min is not None:
            ok &= value >= gate.min
        if value is not None and gate.max is not None:
            ok &= value <= gate.max
        out.append(GateResult(metric=name, min=gate.min, max=gate.max, value=value, ok=ok))
    return out


def load_report(path: str | Path) -> Report:

    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    try:
        return Report.model_validate_json(p.read_text())
    except FileNotFoundError:
        raise InputError(f"--baseline: no report at {p}", field="--baseline") from None
    except ValueError as exc:
        msg = f"--baseline: {p} is not a Keel eval report: {exc}"
        raise InputError(msg, field="--baseline") from None


def fmt(value: float) -> str:
    return format(value, ".6g")


def _gate_text(g: GateResult | None) -> str:
    if g is None:
        return ""
    parts = []
    if g.min is not None:
        parts.append(f">= {fmt(g.min)}")
    if g.max is not None:
        parts.append(f"<= {fmt(g.max)}")
    return " and ".join(parts)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(report: Report, charts: list[str]) -> str:
    gates = {g.metric: g for g in report.gates}
    lines = [
        f"# Keel evaluation: {report.suite}",
        "",
        f"**{'PASSED' if report.passed else 'FAILED'}** — "
        f"{sum(g.ok for g in report.gates)}/{len(report.gates)} gates met, "
        f"{sum(s.passed for s in report.scenarios)}/{len(report.scenarios)} scenarios as "
        f"expected, {report.duration_s:.0f} s.",
        "",
        "## Metrics",
        "",
        "| metric | value | better | gate | status |",
        "|---|---|---|---|---|",
    ]
    for name in sorted(report.metrics):
        g = gates.get(name)
        status = "" if g is None else ("ok" if g.ok else "FAIL")
        lines.append(
            f"| {name} | {fmt(report.metrics[name])} | {direction(name)} | {_gate_text(g)} "
            f"| {status} |"
        )
    missing = [g for g in report.gates if g.value is None]
    for g in missing:
        lines.append(f"| {g.metric} | (not measured) | | {_gate_text(g)} | FAIL |")
    lines += ["", *[f"![{Path(c).stem}]({c})" for c in charts], ""]
    for layer, title, first, timed in (
        ("model", "Model tiers", ["tier", "prompt"], True),
        ("component", "Components", ["component", "case"], False),
    ):
        cases = [c for c in report.cases if c.layer == layer]
        if not cases:
            continue
        head = [*first, "expected", "got", "ok", *(["latency s"] if timed else [])]
        lines += [f"## {title}", "", f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
        for c in cases:
            row = [c.group, _cell(c.case), _cell(c.expected), _cell(c.got)]
            row += ["yes" if c.ok else "no", *([f"{c.latency_s:.3f}"] if timed else [])]
            lines.append(f"| {' | '.join(row)} |")
        lines.append("")
    if report.scenarios:
        lines += [
            "## Scenarios",
            "",
            "| scenario | tags | run | status | steps | tools | cost | least sure | as expected "
            "| misses | safety |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for s in report.scenarios:
            m = s.metrics
            lines.append(
                f"| {s.scenario} | {', '.join(s.tags)} | {s.run_id} | {s.status} | "
                f"{m.steps if m else ''} | {', '.join(m.tools_applied) if m else ''} | "
                f"{fmt(m.cost) if m else ''} | {_sure(m)} | {'yes' if s.passed else 'NO'} | "
                f"{_cell('; '.join(s.misses))} | {_cell('; '.join(s.safety))} |"
            )
        lines.append("")
    return "\n".join(lines)


def _sure(m: TrajectoryMetrics | None) -> str:
    """The least sure model answer's confidence, and any write held for it."""
    if m is None or m.min_confidence is None:
        return ""
    held = f", {m.confidence_holds} held" if m.confidence_holds else ""
    return f"{m.min_confidence:.2f}{held}"


_ROW = re.compile(r"^\| (?P<name>[a-z0-9_.]+) \| (?P<value>[^|]+) \|")


def read_markdown_metrics(text: str) -> dict[str, float]:
    """The metrics table of a report's markdown, read back."""
    out: dict[str, float] = {}
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        m = _ROW.match(line)
        if m and m.group("name") != "metric":
            try:
                out[m.group("name")] = float(m.group("value"))
            except ValueError:
                continue
    return out


def charts(report: Report, folder: Path) -> list[str]:
    """One PNG per layer measured; returns their paths relative to ``folder``. Charts need
    the ``charts`` extra (matplotlib); without it the report is written without them."""
    try:
        import matplotlib  # noqa: PLC0415 - optional dependency (the charts extra)
    except ImportError:
        return []

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    folder.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    tiers = sorted({c.group for c in report.cases if c.layer == "model"})
    if tiers:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
        acc = [report.metrics.get(f"model.{t}.accuracy", 0.0) for t in tiers]
        p50 = [report.metrics.get(f"model.{t}.latency_p50_s", 0.0) for t in tiers]
        p95 = [report.metrics.get(f"model.{t}.latency_p95_s", 0.0) for t in tiers]
        ax1.bar(tiers, acc, color="#4c72b0")
        ax1.set_ylim(0, 1.05)
        ax1.set_title("accuracy on the prompt set")
        xs = range(len(tiers))
        ax2.bar([x - 0.2 for x in xs], p50, width=0.4, label="p50", color="#55a868")
        ax2.bar([x + 0.2 for x in xs], p95, width=0.4, label="p95", color="#c44e52")
        ax2.set_xticks(list(xs), tiers)
        ax2.set_title("latency (s)")
        ax2.legend()
        fig.suptitle("model tiers")
        fig.tight_layout()
        fig.savefig(folder / "models.png", dpi=100)
        plt.close(fig)
        written.append("charts/models.png")
    comp = {k: v for k, v in report.metrics.items() if k.startswith("component.")}
    if comp:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        names = sorted(comp)
        ax.barh([n.removeprefix("component.") for n in names], [comp[n] for n in names])
        ax.set_xlim(0, 1.05)
        ax.set_title("components (share correct)")
        fig.tight_layout()
        fig.savefig(folder / "components.png", dpi=100)
        plt.close(fig)
        written.append("charts/components.png")
    if report.scenarios:
        fig, (ax1, ax2) = plt.subplots(
            1, 2, figsize=(11, max(3.5, 0.28 * len(report.scenarios))), width_ratios=[3, 2]
        )
        names = [s.scenario for s in report.scenarios]
        steps = [s.metrics.steps if s.metrics else 0 for s in report.scenarios]
        colours = ["#55a868" if s.passed else "#c44e52" for s in report.scenarios]
        ax1.barh(names, steps, color=colours)
        ax1.invert_yaxis()
        ax1.set_title("steps per scenario (green: as expected)")
        ax1.tick_params(axis="y", labelsize=7)
        statuses: dict[str, int] = {}
        for s in report.scenarios:
            statuses[s.status] = statuses.get(s.status, 0) + 1
        ax2.bar(list(statuses), list(statuses.values()), color="#8172b2")
        ax2.set_title("final status")
        ax2.tick_params(axis="x", labelrotation=30, labelsize=8)
        fig.tight_layout()
        fig.savefig(folder / "trajectories.png", dpi=100)
        plt.close(fig)
        written.append("charts/trajectories.png")
    return written


def write(report: Report, folder: Path) -> dict[str, Path]:
    """``report.json``, ``report.md`` and ``charts/*.png`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    written = charts(report, folder / "charts")
    (folder / "report.json").write_text(report.model_dump_json(indent=2))
    (folder / "report.md").write_text(markdown(report, written))
    return {
        "json": folder / "report.json",
        "markdown": folder / "report.md",
        **{Path(c).stem: folder / c for c in written},
    }


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
