"""The orchestrator on a real Ray instance, over a local directory and over S3."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from keel.client import Keel
from keel.core.events import EffectReconciled, EffectResult, NodeCompleted, NodeFailed, RunStatus
from tests.actors.conftest import make_keel, stop_orchestrator
from tests.actors.workflows import counter
from tests.conftest import Backend

FIVE = "tests.actors.workflows:five"
NODES = ["a", "charge", "c", "ship", "e"]
# The whole matrix (every fault point of every node) runs in-process in the fast tier
# (tests/runtime/test_crash_matrix.py); here a real orchestrator process dies at the points
# where that matters most: a node in flight, and either side of an effect.
FAULTS = [("during_node", "c"), ("after_intent", "charge"), ("after_effect", "ship")]


def test_five_node_run_completes_with_one_effect_each(
    ray_session: None, request: pytest.FixtureRequest, tmp_path: Path, s3_backend: Backend
) -> None:
    # On S3 (a local directory is what every other test here uses).
    keel = make_keel(s3_backend)
    request.addfinalizer(lambda: stop_orchestrator(keel))
    st = keel.start(FIVE, "ship it", {"dir": str(tmp_path)})
    final = keel.watch(st.run_id, timeout_s=60)
    assert final.status == RunStatus.SUCCEEDED
    assert final.data["trail"] == ["a", "c", "e"] and final.data["total"] == 3
    assert counter(tmp_path / "charge.json") == 1
    assert counter(tmp_path / "ship.json") == 1
    assert final.data["charged"] == {"count": 1}
    # What the orchestrator holds equals what storage holds.
    assert keel.show(st.run_id).state == final


def test_following_a_run_only_to_its_end_asks_the_orchestrator_once(
    keel: Keel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``keel batch``, evals and the MCP gateway follow runs without reading their events:
    that is one long call for the whole run, not one per commit (each of which made the
    orchestrator copy the run's state while it drove it); with ``on_events``, every event
    still arrives."""
    asked: list[str] = []
    call = keel._call

    def counted(method: str, *args: object, **kwargs: float) -> object:
        asked.append(method)
        return call(method, *args, **kwargs)

    monkeypatch.setattr(keel, "_call", counted)
    quiet, shown = tmp_path / "quiet", tmp_path / "shown"
    quiet.mkdir()
    shown.mkdir()
    st = keel.start(FIVE, "ship it", {"dir": str(quiet)})
    assert keel.watch(st.run_id, timeout_s=60).status == RunStatus.SUCCEEDED
    assert asked == ["start_run", "wait"]

    seen: list[int] = []
    st = keel.start(FIVE, "ship it", {"dir": str(shown)})
    final = keel.watch(st.run_id, lambda evs, _st: seen.extend(e.seq for e in evs), timeout_s=60)
    assert final.status == RunStatus.SUCCEEDED
    assert seen == list(range(1, final.last_seq + 1))  # every event, once, in order


@pytest.mark.parametrize(("point", "node"), FAULTS, ids=[f"{p}-{n}" for p, n in FAULTS])
def test_orchestrator_crash_never_repeats_an_effect(
    keel: Keel, tmp_path: Path, point: str, node: str
) -> None:
    before = keel.info()
    ray.get(keel.orchestrator().arm_fault.remote(point, node))
    st = keel.start(FIVE, "crash me", {"dir": str(tmp_path), "slow_s": 0.3})
    final = keel.watch(st.run_id, timeout_s=120)

    after = keel.info()
    assert after["pid"] != before["pid"] and after["restarted"], "the fault did not fire"
    assert final.status == RunStatus.SUCCEEDED, final.reason
    assert counter(tmp_path / "charge.json") == 1
    assert counter(tmp_path / "ship.json") == 1
    assert final.data["trail"] == ["a", "c", "e"] and final.data["total"] == 3

    events = keel.show(st.run_id).events
    completed = [e.node for e in events if isinstance(e, NodeCompleted)]
    assert completed == NODES, "a node was committed twice or skipped"
    if point == "after_effect":
        found = [e for e in events if isinstance(e, EffectResult) and e.reconciled]
        assert len(found) == 1, "verify() should have found the applied effect"
    if point == "after_intent":
        assert any(isinstance(e, EffectReconciled) and not e.applied for e in events)


def test_node_timeout_is_enforced(keel: Keel) -> None:
    st = keel.start("tests.actors.workflows:slow", "")
    final = keel.watch(st.run_id, timeout_s=60)
    assert final.status == RunStatus.FAILED
    assert final.error is not None and final.error.code == "node_timeout"
    failures = [e for e in keel.show(st.run_id).events if isinstance(e, NodeFailed)]
    # Cut short of the node's 30 s sleep; a duration also counts the wait for a worker to
    # start the task, which on a busy 2-core machine can be seconds.
    assert len(failures) == 2 and all(f.duration_s < 25 for f in failures)


def test_slow_run_does_not_block_others(keel: Keel, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    slow_dir, fast_dir = tmp_path / "slow", tmp_path / "fast"
    slow_dir.mkdir()
    fast_dir.mkdir()
    blocked = keel.start(FIVE, "", {"dir": str(slow_dir), "gate": str(gate)})
    quick = keel.start(FIVE, "", {"dir": str(fast_dir)})
    assert keel.watch(quick.run_id, timeout_s=60).status == RunStatus.SUCCEEDED
    assert keel.show(blocked.run_id).state.status == RunStatus.RUNNING
    gate.touch()
    assert keel.watch(blocked.run_id, timeout_s=60).status == RunStatus.SUCCEEDED
