"""Running a suite: the three layers in turn, a progress bar, and the report written."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from keel.evals.layers import (
    LayerOutput,
    Tick,
    component_layer,
    model_layer,
    trajectory_layer,
)
from keel.evals.report import Report, apply_gates
from keel.evals.suite import Suite
from keel.policy.engine import PolicyEngine

Layer = Literal["model", "component", "trajectory"]
LAYERS: tuple[Layer, ...] = ("model", "component", "trajectory")


def _work(suite: Suite, keel: Any, layers: tuple[Layer, ...]) -> int:
    c = suite.components
    total = 0
    if "model" in layers:
        total += len(suite.models) * len(keel.config.router.resolved_tiers())
    if "component" in layers:
        total += len(c.routing) + len(c.args) + len(c.retrieval) + len(c.policy)
    if "trajectory" in layers:
        total += len(suite.scenarios)
    return total


@contextmanager
def progress(total: int, show: bool) -> Iterator[Tick]:
    if not show:
        yield lambda _label: None
        return

    with Progress(
        TextColumn("[bold]eval[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        transient=False,
    ) as bar:
        task = bar.add_task("", total=total)

        def tick(label: str) -> None:
            bar.update(task, advance=1, description=label[:60])

        yield tick


def deployment(keel: Any) -> dict[str, Any]:
    """What was evaluated: enough to tell two reports' configurations apart."""

    cfg = keel.config
    return {
        "tiers": {t.name: t.model for t in cfg.router.resolved_tiers()},
        "max_scores": {t.name: t.max_score for t in cfg.router.resolved_tiers()},
        "policy_version": PolicyEngine(cfg.policy.model, cfg.policy.policy).version,
        "budgets": cfg.budgets.model_dump(mode="json"),
        "storage": cfg.storage_url(),
    }


def evaluate(
    keel: Any,
    suite: Suite,
    *,
    workdir: Path,
    layers: tuple[Layer, ...] = LAYERS,
    show_progress: bool = True,
    prefix: str | None = None,
) -> Report:
    """Measure ``suite`` against the deployment ``keel`` points at."""
    started = time.monotonic()
    prefix = prefix or f"eval-{suite.name}-{time.strftime('%Y%m%d%H%M%S')}"
    outputs: list[LayerOutput] = []
    with progress(_work(suite, keel, layers), show_progress) as tick:
        if "model" in layers:
            outputs.append(model_layer(keel, suite, tick))
        if "component" in layers:
            outputs.append(component_layer(keel, suite, tick))
        if "trajectory" in layers:
            outputs.append(
                trajectory_layer(keel, suite, tick, base=workdir / prefix, prefix=prefix)
            )
    metrics: dict[str, float] = {}
    for out in outputs:
        metrics.update(out.metrics)
    gates = apply_gates(metrics, {k: v for k, v in suite.gates.items() if _measured(k, layers)})
    return Report(
        suite=suite.name,
        config=deployment(keel),
        metrics=metrics,
        gates=gates,
        passed=all(g.ok for g in gates),
        cases=[c for out in outputs for c in out.cases],
        scenarios=[s for out in outputs for s in out.scenarios],
        duration_s=round(time.monotonic() - started, 2),
    )


def _measured(metric: str, layers: tuple[Layer, ...]) -> bool:
    """A gate applies only to the layers that ran (``component.proposal_validity`` comes
    from the trajectories)."""
    if metric == "component.proposal_validity":
        return "trajectory" in layers
    return metric.split(".", 1)[0] in layers
