"""A run its creator never drove (the creating incarnation died right after checkpoint 0)
is driven by whichever incarnation is asked about it, without waiting for a sweep."""

from __future__ import annotations

from pathlib import Path

from actors.engine import RunEngine
from actors.runner import InlineNodeRunner
from actors.state import RunStatus
from keel.demo import workflow as demo
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
