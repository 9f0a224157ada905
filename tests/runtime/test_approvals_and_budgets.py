"""Policy, approvals and budgets in the engine itself, without Ray: the real Casbin
enforcer with the suite's policy, tools that count what really happened."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from keel.config import Budgets
from keel.core.events import (
    ApprovalDecided,
    BudgetExceeded,
    PolicyDecided,
    ProposalRejected,
    RunStatus,
)
from keel.core.tool import preview
from keel.errors import PolicyError, RunStateError
from keel.runtime.decisions import load_events
from keel.storage.runs import RunStore
from tests.actors.workflows import RestartService, counter
from tests.runtime.conftest import EngineFactory, abandon

GOOD = {"path": "count.json", "service": "checkout"}


def wf(name: str) -> str:
    return f"tests.actors.workflows:{name}"


async def test_a_write_waits_for_approval_across_a_restart(
    engines: EngineFactory, store: RunStore, tmp_path: Path
) -> None:
    first = engines()
    st = await first.create(wf("restart"), "restart it", {"dir": str(tmp_path), "proposal": GOOD})
    waiting = await first.wait(st.run_id, 30)
    assert waiting.status == RunStatus.AWAITING_APPROVAL and "keel approve" in waiting.reason
    # What the person is shown is the tool's own preview, kept in the ledger with the request.
    assert waiting.approval is not None
    assert waiting.approval.change == "restarts checkout: count.json counts one more"
    await abandon(first)  # the process dies while the run waits

    second = engines()
    assert await second.recover() == []  # a waiting run is not driven, only kept
    with pytest.raises(PolicyError) as refused:
        await second.decide_approval(st.run_id, "bob", True, "looks fine to me")
    assert refused.value.field == "principal"
    assert (await second.view(st.run_id)).state.status == RunStatus.AWAITING_APPROVAL
    assert counter(tmp_path / "count.json") == 0

    await second.decide_approval(st.run_id, "alice", True, "approved in the channel")
    final = await second.wait(st.run_id, 30)
    assert final.status == RunStatus.SUCCEEDED, final.reason
    assert counter(tmp_path / "count.json") == 1
    events = load_events(store.load(st.run_id).events)
    approvals = [e for e in events if isinstance(e, ApprovalDecided)]
    assert [(a.principal, a.approved) for a in approvals] == [("alice", True)]
    # bob's refusal wrote nothing: asking cannot grow a waiting run's ledger.
    assert not [e for e in events if isinstance(e, PolicyDecided) and e.subject == "bob"]
    with pytest.raises(RunStateError):
        await second.decide_approval(st.run_id, "alice", True)


async def test_a_rejected_write_never_runs(engines: EngineFactory, tmp_path: Path) -> None:
    eng = engines()
    st = await eng.create(wf("restart"), "restart it", {"dir": str(tmp_path), "proposal": GOOD})
    assert (await eng.wait(st.run_id, 30)).status == RunStatus.AWAITING_APPROVAL
    final = await eng.decide_approval(st.run_id, "alice", False, "not at peak")
    assert final.status == RunStatus.FAILED and "rejected by alice: not at peak" in final.reason
    assert counter(tmp_path / "count.json") == 0


async def test_a_write_in_a_diagnosing_role_is_denied_and_never_runs(
    engines: EngineFactory, store: RunStore, tmp_path: Path
) -> None:
    eng = engines()
    inputs = {"dir": str(tmp_path), "proposal": GOOD}
    st = await eng.create(wf("diagnose_writes"), "fix it", inputs)
    final = await eng.wait(st.run_id, 30)
    events = load_events(store.load(st.run_id).events)
    decisions = [e for e in events if isinstance(e, PolicyDecided)]
    assert decisions and all(d.effect == "deny" for d in decisions)
    assert decisions[0].subject == "diagnose" and decisions[0].object == "tool:restore_config"
    assert decisions[0].rule == ["default", "deny"] and decisions[0].policy_version
    assert any(isinstance(e, ProposalRejected) for e in events)
    assert final.status == RunStatus.NEEDS_HUMAN and "rejected" in final.reason
    assert counter(tmp_path / "count.json") == 0, "the tool must never have run"


async def test_a_malformed_proposal_goes_back_to_the_planner(
    engines: EngineFactory, store: RunStore, tmp_path: Path
) -> None:
    bad = {"path": "count.json", "service": "Checkout Service!", "force": True}
    eng = engines()
    inputs = {"dir": str(tmp_path), "proposal": bad, "fixed": GOOD}
    st = await eng.create(wf("restore"), "fix", inputs)
    final = await eng.wait(st.run_id, 30)
    assert final.status == RunStatus.SUCCEEDED, final.reason
    rejected = [
        e for e in load_events(store.load(st.run_id).events) if isinstance(e, ProposalRejected)
    ]
    assert len(rejected) == 1
    assert {e["field"] for e in rejected[0].errors} == {"args", "args.service"}
    assert counter(tmp_path / "count.json") == 1


async def test_only_permitted_principals_start_runs(
    engines: EngineFactory, store: RunStore, tmp_path: Path
) -> None:
    eng = engines()
    with pytest.raises(PolicyError) as info:
        await eng.create(wf("restore"), "x", {"dir": str(tmp_path)}, principal="bob")
    assert info.value.field == "principal"
    assert store.list_run_ids() == []  # a refusal writes nothing
    st = await eng.create(
        wf("restore"), "x", {"dir": str(tmp_path), "proposal": GOOD}, principal="alice"
    )
    assert st.principal == "alice"


BUDGETS: list[tuple[str, dict[str, Any], str | None]] = [
    ("max_steps", {"max_steps": 2}, "a"),
    ("max_tool_calls", {"max_tool_calls": 1}, "ship"),
    ("max_wall_s", {"max_wall_s": 0.3}, None),
]


@pytest.mark.parametrize(("budget", "limits", "stopped_before"), BUDGETS)
async def test_each_budget_stops_the_run(
    engines: EngineFactory,
    store: RunStore,
    tmp_path: Path,
    budget: str,
    limits: dict[str, Any],
    stopped_before: str | None,
) -> None:
    eng = engines(budgets=Budgets(**limits))
    st = await eng.create(wf("five"), "", {"dir": str(tmp_path), "slow_s": 0.4})
    final = await eng.wait(st.run_id, 30)
    assert final.status == RunStatus.NEEDS_HUMAN
    crossed = [
        e for e in load_events(store.load(st.run_id).events) if isinstance(e, BudgetExceeded)
    ]
    assert [c.budget for c in crossed] == [budget]
    assert crossed[0].value > crossed[0].limit
    assert f"budget {budget} exceeded" in final.reason and "over by" in final.reason
    if budget == "max_tool_calls":
        assert counter(tmp_path / "ship.json") == 0 and counter(tmp_path / "charge.json") == 1
    if stopped_before == "a":
        assert final.step == 2


async def test_a_run_budget_given_at_start_is_checked_and_applies(
    engines: EngineFactory, store: RunStore, tmp_path: Path
) -> None:
    eng = engines()
    with pytest.raises(Exception, match="max_steps"):
        await eng.create(wf("five"), "", {"dir": str(tmp_path)}, budgets={"max_steps": -1})
    assert store.list_run_ids() == []
    st = await eng.create(wf("five"), "", {"dir": str(tmp_path)}, budgets={"max_tool_calls": 1})
    final = await eng.wait(st.run_id, 30)
    assert final.status == RunStatus.NEEDS_HUMAN and "max_tool_calls" in final.reason
    assert counter(tmp_path / "ship.json") == 0


@pytest.mark.parametrize(
    ("deployment", "own", "expected"),
    [
        ({}, {"max_tool_calls": 1}, {"max_tool_calls": 1, "max_steps": 1000}),
        ({"max_steps": 5000}, {}, {"max_steps": 5000}),  # defaults a run left alone count not
        ({"max_steps": 10}, {"max_steps": 50}, {"max_steps": 10}),  # never loosened
        ({"max_cost": None}, {"max_cost": 0.5}, {"max_cost": 0.5}),
    ],
)
def test_a_runs_own_budgets_only_tighten(
    deployment: dict[str, Any], own: dict[str, Any], expected: dict[str, Any]
) -> None:
    merged = Budgets(**deployment).tightened(Budgets.model_validate(own))
    for name, value in expected.items():
        assert getattr(merged, name) == value


def test_a_failing_preview_is_said_not_raised() -> None:
    tool = RestartService()
    said = preview(tool, {"path": "count.json", "service": "unsayable"})
    assert said == "(the tool could not say: ValueError: no idea)"
    assert preview(tool, GOOD) == "restarts checkout: count.json counts one more"
