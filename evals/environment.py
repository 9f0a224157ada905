"""The demo environment for evaluation: one real service per scenario, broken on purpose.

Each scenario gets its own service directory and process on 127.0.0.1, a run of the
``incident`` workflow against it, and a person in the loop played by the harness as the
scenario says. Everything measured afterwards comes from the run's ledger.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from keel.core.events import RunStatus
from keel.errors import KeelError, PolicyError
from keel.evals.suite import Scenario, Suite
from keel.examples import demo_service
from keel.examples.incident import RUNBOOKS
from keel.storage.memory import MemoryStore

# How long one scenario may take before the harness gives up on it (it is then reported
# as a miss, with the run left as it is for a person to look at).
SCENARIO_TIMEOUT_S = 600.0


class ScenarioRun(BaseModel):
    """What the harness saw of one scenario, before any metric is computed."""

    model_config = ConfigDict(frozen=True)

    scenario: str
    run_id: str
    status: str
    health_before: int
    health_after: int
    duration_s: float
    approval_errors: list[str] = []
    error: str = ""


def seed_memory(keel: Any) -> None:
    """The runbooks the retriever ranks, in the deployment's memory."""

    memory = MemoryStore(keel.store.store)
    for item in RUNBOOKS:
        memory.put(item)


def run_scenario(
    keel: Any, suite: Suite, sc: Scenario, base: Path, prefix: str
) -> list[ScenarioRun]:
    """Run one scenario (twice, on the same service, when it says ``again``) to the point
    where the system stops (finished, or waiting for a person the scenario does not play),
    and stop its service. The second run's result is named ``<id>-again``."""

    root = base / sc.id
    if root.exists():
        shutil.rmtree(root)
    demo_service.prepare(root, sc.fault)
    port = demo_service.free_port()
    proc = demo_service.start(root, port)
    try:
        runs = [_run_once(keel, suite, sc, root, port, f"{prefix}-{sc.id}"[:100], sc.id)]
        if sc.again is not None and not runs[0].error:
            again = f"{sc.id}-again"
            runs.append(_run_once(keel, suite, sc, root, port, f"{prefix}-{again}"[:100], again))
        return runs
    finally:
        demo_service.stop(proc)


def _run_once(
    keel: Any, suite: Suite, sc: Scenario, root: Path, port: int, run_id: str, name: str
) -> ScenarioRun:
    started = time.monotonic()
    approval_errors: list[str] = []
    try:
        before = demo_service.health(port)[0]
        budgets = sc.budgets.model_dump(exclude_none=True) if sc.budgets else None
        state = keel.start(
            suite.workflow,
            sc.goal or suite.goal,
            {"root": str(root), "port": port},
            run_id=run_id,
            budgets=budgets,
        )
        deadline = started + SCENARIO_TIMEOUT_S
        while True:
            left = max(1.0, deadline - time.monotonic())
            state = keel.watch(state.run_id, timeout_s=left, after_seq=state.last_seq)
            if state.status != RunStatus.AWAITING_APPROVAL or time.monotonic() > deadline:
                break
            if sc.approval.decision == "leave" or approval_errors:
                break
            try:
                state = keel.approve(
                    state.run_id,
                    principal=sc.approval.principal,
                    approved=sc.approval.decision == "approve",
                    reason=sc.approval.reason,
                )
            except PolicyError as exc:
                approval_errors.append(str(exc))
                state = keel.show(state.run_id).state
        after = demo_service.health(port)[0]
        return ScenarioRun(
            scenario=name,
            run_id=state.run_id,
            status=str(state.status),
            health_before=before,
            health_after=after,
            duration_s=round(time.monotonic() - started, 3),
            approval_errors=approval_errors,
        )
    except KeelError as exc:
        return ScenarioRun(
            scenario=name,
            run_id=run_id,
            status="error",
            health_before=0,
            health_after=0,
            duration_s=round(time.monotonic() - started, 3),
            error=f"{type(exc).__name__}: {exc}",
        )
