"""Policy and validation where Ray matters: an approval that outlives the orchestrator's
process, the executor's own checks, model budgets through the router on Serve. The same
rules without Ray (denials, rejections, budgets, who may start) are in tests/runtime."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keel.actors.validator import check
from keel.actors.worker_messages import ExecuteRequest, ToolSpec
from keel.actors.workers import pool
from keel.client import Keel
from keel.config import Budgets, KeelConfig, OrchestratorConfig, StorageConfig
from keel.core.events import (
    ApprovalDecided,
    BudgetExceeded,
    PolicyDecided,
    RunStatus,
)
from keel.core.registry import load_workflow
from keel.errors import InputError, PolicyError
from tests.actors.conftest import stop_orchestrator
from tests.actors.workflows import TOOLS, counter
from tests.fakes import script_triage, scripted_keel_config

GOOD = {"path": "count.json", "service": "checkout"}


def make(tmp_path: Path, **budgets: Any) -> Keel:
    return Keel(
        KeelConfig(
            storage=StorageConfig(url=str(tmp_path / "store"), fsync=False),
            orchestrator=OrchestratorConfig(name=f"orch-{tmp_path.name}", node_num_cpus=0.25),
            budgets=Budgets(**budgets),
        )
    )


@pytest.fixture(scope="module")
def keel(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keel]:
    """One deployment for the module's runs (each test's are its own)."""
    client = make(tmp_path_factory.mktemp("enforcement"), max_rejections=2)
    yield client
    stop_orchestrator(client)


def wf(name: str) -> str:
    return f"tests.actors.workflows:{name}"


def test_restart_waits_for_approval_across_an_orchestrator_restart(
    keel: Keel, tmp_path: Path
) -> None:
    st = keel.start(wf("restart"), "restart it", {"dir": str(tmp_path), "proposal": GOOD})
    waiting = keel.watch(st.run_id, timeout_s=60)
    assert waiting.status == RunStatus.AWAITING_APPROVAL
    assert "keel approve" in waiting.reason

    # The pause is durable: the orchestrator dies and comes back still waiting.
    before = keel.info()["pid"]
    ray.kill(keel.orchestrator(), no_restart=False)
    deadline = time.monotonic() + 60
    while keel.info()["pid"] == before:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert keel.show(st.run_id).state.status == RunStatus.AWAITING_APPROVAL

    with pytest.raises(PolicyError) as refused:
        keel.approve(st.run_id, principal="bob", reason="looks fine to me")
    assert refused.value.field == "principal"
    assert keel.show(st.run_id).state.status == RunStatus.AWAITING_APPROVAL
    assert counter(tmp_path / "count.json") == 0

    keel.approve(st.run_id, principal="alice", reason="approved in the incident channel")
    final = keel.watch(st.run_id, timeout_s=60)
    assert final.status == RunStatus.SUCCEEDED
    assert counter(tmp_path / "count.json") == 1
    events = keel.show(st.run_id).events
    approvals = [e for e in events if isinstance(e, ApprovalDecided)]
    assert [(a.principal, a.approved) for a in approvals] == [("alice", True)]
    # bob's refusal wrote nothing: asking cannot grow a waiting run's ledger.
    assert not [e for e in events if isinstance(e, PolicyDecided) and e.subject == "bob"]


def test_executor_refuses_what_did_not_pass(keel: Keel, tmp_path: Path) -> None:
    """Defence in depth: called directly, the executor validates and checks policy itself."""

    executor = pool("executor", keel.settings().node_env())
    path = str(tmp_path / "direct.json")
    cases: list[tuple[str, dict[str, Any], type[Exception], str]] = [
        ("restart", {"path": path}, InputError, "args"),
        ("restart", {"path": path, "service": "x" * 100}, InputError, "args.service"),
        # the node's own role decides: diagnose may not write at all
        ("diagnose_writes", {"path": path, "service": "checkout"}, PolicyError, "role"),
        # and a restart needs an approval the run's ledger does not hold
        ("restart", {"path": path, "service": "checkout"}, PolicyError, "role"),
    ]
    for name, args, error, field in cases:
        workflow = wf(name)
        tool = load_workflow(workflow).nodes["act"].tool_names()[0]
        msg = ExecuteRequest(
            workflow_ref=workflow, node="act", tool=tool, args=args, key=f"k-{name}/0/act/1"
        )
        with pytest.raises(error) as info:
            executor.call_sync("execute", msg)
        assert info.value.field == field  # type: ignore[attr-defined]
    assert counter(path) == 0


# Hypothesis: malformed proposals never validate, and every error names a field.
TOOL_SPECS = [ToolSpec.model_validate(t) for t in TOOLS]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
malformed = st.one_of(
    # wrong tool names
    st.fixed_dictionaries({"tool": st.text(max_size=30), "args": st.just({"service": "a"})}),
    # wrong types for fields
    st.fixed_dictionaries(
        {"tool": st.just("read_logs"), "args": st.fixed_dictionaries({"service": json_values})}
    ).filter(lambda p: not isinstance(p["args"]["service"], str)),
    # missing required fields
    st.fixed_dictionaries({"tool": st.just("restore_config"), "args": st.just({})}),
    # extra fields, at the top or in args
    st.fixed_dictionaries(
        {"tool": st.just("read_logs"), "args": st.just({"service": "a"}), "extra": json_values}
    ),
    st.fixed_dictionaries(
        {
            "tool": st.just("restore_config"),
            "args": st.fixed_dictionaries({"service": st.just("a"), "sudo": json_values}),
        }
    ),
    # huge strings
    st.fixed_dictionaries(
        {
            "tool": st.just("restore_config"),
            "args": st.fixed_dictionaries(
                {"service": st.integers(65, 200_000).map(lambda n: "x" * n)}
            ),
        }
    ),
    # args that are not an object
    st.fixed_dictionaries({"tool": st.just("read_logs"), "args": json_values}).filter(
        lambda p: not isinstance(p["args"], dict)
    ),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(malformed)
def test_malformed_proposals_never_validate(proposal: dict[str, Any]) -> None:
    if proposal.get("tool") in ("read_logs", "restore_config") and proposal == {
        "tool": proposal["tool"],
        "args": {"service": "a"},
    }:
        return  # a well-formed one slipped in through the tool-name strategy
    ok, errors = check(proposal, TOOL_SPECS)
    assert ok is None and errors
    for err in errors:
        assert err.field and err.reason
        assert err.field in ("tool", "args", "extra") or err.field.startswith("args.")
        assert len(err.reason) <= 300


@pytest.mark.parametrize(
    ("limits", "budget"),
    [({"max_model_calls": 1}, "max_model_calls"), ({"max_cost": 1e-5}, "max_cost")],
)
def test_model_budgets_stop_the_run(
    serve_port: int, scripted_router: Any, tmp_path: Path, limits: dict[str, Any], budget: str
) -> None:

    scripted = scripted_router
    script_triage(scripted)
    keel = Keel(scripted_keel_config(tmp_path, scripted, serve_port, budgets=Budgets(**limits)))
    try:
        st = keel.start(wf("triage"), "bad config on checkout")
        final = keel.watch(st.run_id, timeout_s=120)
        events = keel.show(st.run_id).events
    finally:
        stop_orchestrator(keel)
    assert final.status == RunStatus.NEEDS_HUMAN, final.reason
    crossed = [e for e in events if isinstance(e, BudgetExceeded)]
    assert [c.budget for c in crossed] == [budget] and crossed[0].value > crossed[0].limit
    assert final.next_node != "classify"  # stopped after the call that crossed it
