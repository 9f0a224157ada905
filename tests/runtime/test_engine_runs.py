"""Runs through the engine without Ray: node retries and their backoff, a node's own bad
output, resume and cancel, each checked against the ledger and the state it folds into."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import TypeVar

import pytest

from keel.core.events import Event, NodeCompleted, NodeFailed, RunStatus
from keel.errors import RunStateError
from keel.runtime.decisions import load_events
from keel.storage.runs import RunStore
from tests.actors.workflows import counter, where
from tests.runtime.conftest import EngineFactory

FIVE = "tests.actors.workflows:five"
E = TypeVar("E", bound=Event)


def stored(store: RunStore, run_id: str, kind: type[E]) -> list[E]:
    """The run's events of ``kind``, read back from storage."""
    return [e for e in load_events(store.load(run_id).events) if isinstance(e, kind)]


async def test_retries_with_backoff_then_loops_to_end(
    engines: EngineFactory, store: RunStore
) -> None:
    eng = engines()
    st = await eng.create("tests.actors.workflows:flaky", "", {"fail_times": 3})
    final = await eng.wait(st.run_id, 30)
    assert final.status == RunStatus.SUCCEEDED, final.reason
    failures = stored(store, st.run_id, NodeFailed)
    assert [f.attempt for f in failures] == [1, 2]
    assert all(f.error.type == "ConnectionError" and f.retry_in_s is not None for f in failures)
    assert final.data == {"tries": 3, "loops": 3}


async def test_retries_exhausted_fail_the_run(engines: EngineFactory) -> None:
    eng = engines()
    st = await eng.create("tests.actors.workflows:flaky", "", {"fail_times": 9})
    final = await eng.wait(st.run_id, 30)
    assert final.status == RunStatus.FAILED
    assert final.error is not None and "attempt 3" in final.error.message


async def test_an_unknown_state_field_fails_without_retry(
    engines: EngineFactory, store: RunStore
) -> None:
    eng = engines()
    st = await eng.create("tests.actors.workflows:bad", "", {})
    final = await eng.wait(st.run_id, 30)
    assert final.status == RunStatus.FAILED
    assert final.error is not None and final.error.field == "updates.no_such_field"
    failures = stored(store, st.run_id, NodeFailed)
    assert len(failures) == 1


async def test_resume_and_cancel_refuse_finished_runs(
    engines: EngineFactory, tmp_path: Path
) -> None:
    eng = engines()
    st = await eng.create(FIVE, "", {"dir": str(tmp_path)})
    assert (await eng.wait(st.run_id, 30)).status == RunStatus.SUCCEEDED
    with pytest.raises(RunStateError) as resumed:
        await eng.resume(st.run_id)
    assert resumed.value.field == "run_id"
    with pytest.raises(RunStateError):
        await eng.cancel(st.run_id, reason="too late")


async def test_cancel_stops_a_running_run_before_its_effects(
    engines: EngineFactory, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    eng = engines()
    st = await eng.create(FIVE, "", {"dir": str(tmp_path), "gate": str(gate)})

    async def charged() -> None:
        while counter(tmp_path / "charge.json") < 1:  # noqa: ASYNC110 (a file, not an event)
            await asyncio.sleep(0.02)

    await asyncio.wait_for(charged(), 30)  # c now waits on the gate
    final = await eng.cancel(st.run_id, reason="operator said so")
    assert final.status == RunStatus.CANCELLED and final.reason == "operator said so"
    gate.touch()
    await asyncio.sleep(0.3)
    assert (await eng.view(st.run_id)).state.status == RunStatus.CANCELLED
    assert counter(tmp_path / "ship.json") == 0, "a cancelled run applied an effect"


async def test_an_async_node_runs_on_the_engines_loop_a_sync_one_on_a_thread(
    engines: EngineFactory, store: RunStore
) -> None:
    eng = engines()
    st = await eng.create("tests.actors.workflows:where", "", {})
    final = await eng.wait(st.run_id, 30)
    assert final.status == RunStatus.SUCCEEDED, final.error
    on_loop, on_thread = final.data["threads"]
    assert on_loop == threading.get_ident(), "the async node ran off the engine's loop"
    assert on_thread != on_loop
    done = stored(store, st.run_id, NodeCompleted)
    assert [(e.node, e.worker) for e in done] == [
        ("awaits", "orchestrator"),
        ("on_thread", "orchestrator"),
    ]
    assert {n: node.kind for n, node in where.nodes.items()} == {
        "awaits": "async",
        "on_thread": "inline",
    }


async def test_an_async_node_past_its_timeout_is_cancelled_and_retried(
    engines: EngineFactory, store: RunStore
) -> None:
    eng = engines()
    st = await eng.create("tests.actors.workflows:slow_async", "", {})
    final = await eng.wait(st.run_id, 30)
    assert final.status == RunStatus.FAILED
    failures = stored(store, st.run_id, NodeFailed)
    assert [f.attempt for f in failures] == [1, 2]
    assert all(f.error.type == "TimeoutError" for f in failures), failures
    assert all(f.duration_s < 5 for f in failures), "the node was not stopped at its timeout"
