"""A run its creator never drove (the creating incarnation died right after checkpoint 0)
is driven by whichever incarnation is asked about it, without waiting for a sweep."""

from __future__ import annotations

from pathlib import Path

from actors.engine import RunEngine, load_events
from actors.runner import InlineNodeRunner
from actors.state import EffectResult, RunStatus
from keel.demo import workflow as demo
from keel.errors import WorkerLostError
from storage.local import LocalStore
from storage.runs import RunStore


async def test_an_orphaned_run_is_driven_when_watched(tmp_path: Path) -> None:
    store = RunStore(LocalStore(tmp_path / "store", fsync=False))
    dying = RunEngine(store, InlineNodeRunner(), lambda _ref: demo)
    created = await dying.create(
        "keel.demo:workflow",
        "checkout is down",
        {
            "outbox": str(tmp_path / "outbox"),
        },
    )
    orphan = dying.runs[created.run_id]
    assert orphan.task is not None
    orphan.task.cancel()  # its creator is gone before it took a step

    survivor = RunEngine(store, InlineNodeRunner(), lambda _ref: demo)  # never swept
    view = await survivor.watch(created.run_id, 0, 0.1)
    assert view.state.status == RunStatus.RUNNING
    final = await survivor.wait(created.run_id, 30)
    assert final.status == RunStatus.SUCCEEDED, final.reason
    assert len(list((tmp_path / "outbox").glob("*.json"))) == 2  # paged and noted, once each


class LosesItsExecutor(InlineNodeRunner):
    """Applies the effect, then reports the executor lost, as when its node dies between
    doing the work and answering."""

    def __init__(self) -> None:
        self.applied: list[str] = []

    async def apply_effect(self, tool, args, key, timeout_s, *, role="", approved_by=None):  # type: ignore[no-untyped-def]
        await super().apply_effect(tool, args, key, timeout_s, role=role, approved_by=approved_by)
        self.applied.append(key)
        raise WorkerLostError("executor lost during execute (ActorDiedError)")


async def test_an_effect_whose_executor_was_lost_is_verified_not_repeated(tmp_path: Path) -> None:
    store = RunStore(LocalStore(tmp_path / "store", fsync=False))
    runner = LosesItsExecutor()
    engine = RunEngine(store, runner, lambda _ref: demo)
    created = await engine.create(
        "keel.demo:workflow", "checkout is down", {"outbox": str(tmp_path / "outbox")}
    )
    final = await engine.wait(created.run_id, 30)
    assert final.status == RunStatus.SUCCEEDED, final.reason
    assert len(runner.applied) == 2 == len(set(runner.applied))  # each effect applied once
    events = load_events(store.load(created.run_id).events)
    results = [e for e in events if isinstance(e, EffectResult)]
    assert len(results) == 2 and all(r.ok and r.reconciled for r in results)
    assert len(list((tmp_path / "outbox").glob("*.json"))) == 2
