"""Exactly once on the in-process engine (no Ray): one driver per run, slow and lost
effects, a person's answer, and runs that are never lost. Effects are counted by the
tool's own counter (a file it writes), never by the ledger."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, JsonValue

from keel.core.events import EffectReconciled, EffectResult, OwnerChanged, RunStatus
from keel.core.nodes import NodeContext
from keel.core.state import replay
from keel.core.tool import Tool, Verification
from keel.core.workflow import END, Workflow
from keel.errors import RunOwnedError, RunStateError, WorkerLostError
from keel.examples.demo import workflow as demo
from keel.policy.engine import PolicyEngine
from keel.runtime.decisions import load_events
from keel.runtime.engine import RunEngine
from keel.runtime.inline import InlineNodeRunner
from keel.runtime.runlog import RunFenced
from keel.storage.leases import Lease, Leases
from keel.storage.local import LocalStore
from keel.storage.runs import PENDING, RunStore
from tests.conftest import TEST_POLICY


class SendArgs(BaseModel):
    path: str
    sleep_s: float = 0.0


class SlowSend(Tool):
    """A plain, non-idempotent send: every apply adds one to the file's count, after
    sleeping as long as it is told. ``verify`` answers from the keys it has seen, or
    cannot tell (``blind``)."""

    name = "send"
    action = "write"
    args_model = SendArgs

    def __init__(self, blind: bool = False) -> None:
        self.blind = blind
        self.lock = threading.Lock()

    def apply(self, args: dict[str, Any], key: str) -> JsonValue:
        time.sleep(float(args.get("sleep_s", 0.0)))
        with self.lock:
            path = Path(args["path"])
            data = json.loads(path.read_text()) if path.exists() else {"count": 0, "keys": []}
            data["count"] += 1
            data["keys"].append(key)
            path.write_text(json.dumps(data))
        return {"count": data["count"]}

    def verify(self, args: dict[str, Any], key: str) -> Verification:
        if self.blind:
            return Verification(status="unknown", detail="this tool keeps no record")
        path = Path(args["path"])
        keys = json.loads(path.read_text())["keys"] if path.exists() else []
        return Verification(status="applied" if key in keys else "not_applied")


def sends(path: Path) -> int:
    return int(json.loads(path.read_text())["count"]) if path.exists() else 0


class SendState(BaseModel):
    sent: JsonValue = None


def send_flow(tool: SlowSend, *, timeout_s: float | None = None, grace_s: float | None = None):
    wf = Workflow("send", state=SendState)

    @wf.effect(tool, role="mitigate", result_field="sent", timeout_s=timeout_s, grace_s=grace_s)
    def deliver(state: SendState, ctx: NodeContext) -> dict[str, Any]:
        return {"path": ctx.inputs["path"], "sleep_s": ctx.inputs.get("sleep_s", 0.0)}

    wf.edge("deliver", END)
    return wf.validate()


def engine(store: RunStore, wf: Workflow, runner: Any = None, **kw: Any) -> RunEngine:
    kw.setdefault("policy", PolicyEngine(None, TEST_POLICY))
    return RunEngine(store, runner or InlineNodeRunner(), lambda _ref: wf, **kw)


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return RunStore(LocalStore(tmp_path / "store", fsync=False))


async def test_a_live_owners_runs_are_never_driven_by_another_engine(
    store: RunStore, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    first = engine(store, demo)
    created = await first.create(
        "keel.examples.demo:workflow", "down", {"outbox": str(tmp_path / "o")}
    )
    # A second engine on the same store: it finds the run, and leaves it alone.
    second = engine(store, demo)
    assert await second.recover() == []
    view = await second.view(created.run_id)
    assert not view.active and created.run_id not in second.runs
    with pytest.raises(RunOwnedError):
        await second.cancel(created.run_id)
    final = await first.wait(created.run_id, 30)
    assert final.status == RunStatus.SUCCEEDED
    assert len(list((tmp_path / "o").glob("*.json"))) == 2  # paged and noted, once each
    gate.touch()
    await first.close()
    await second.close()


async def test_an_orphaned_run_is_driven_once_its_owner_lets_go(
    store: RunStore, tmp_path: Path
) -> None:
    dying = engine(store, demo)
    created = await dying.create(
        "keel.examples.demo:workflow", "down", {"outbox": str(tmp_path / "o")}
    )
    await dying.close()  # its creator is gone (and said so) before it took a step

    survivor = engine(store, demo)  # never swept: driven because someone looks at it
    final = await survivor.wait(created.run_id, 30)
    assert final.status == RunStatus.SUCCEEDED, final.reason
    events = load_events(store.load(created.run_id).events)
    taken = [e for e in events if isinstance(e, OwnerChanged)]
    assert [t.owner for t in taken] == [survivor.owner]
    assert len(list((tmp_path / "o").glob("*.json"))) == 2
    await survivor.close()


async def test_an_expired_lease_hands_the_runs_over(store: RunStore, tmp_path: Path) -> None:
    leases = Leases(store.store)
    stalled = engine(store, demo, lease=Lease(leases, "stalled", ttl_s=1.0))
    await stalled.start()
    assert stalled._renewer is not None
    stalled._renewer.cancel()  # it stops renewing, as a paused process would
    created = await stalled.create(
        "keel.examples.demo:workflow", "down", {"outbox": str(tmp_path / "o")}
    )
    run = stalled.runs[created.run_id]
    assert run.task is not None
    run.task.cancel()
    other = engine(store, demo)
    assert await other.recover() == []  # not yet: the lease still holds
    await asyncio.sleep(1.1)
    assert await other.recover() == [created.run_id]
    assert (await other.wait(created.run_id, 30)).status == RunStatus.SUCCEEDED
    await other.close()


async def test_the_loser_of_a_checkpoint_race_stops(store: RunStore, tmp_path: Path) -> None:
    """Two engines that both believe they may write the same checkpoint number: only the
    first create lands; the other is fenced, keeps nothing and stops."""
    wf = send_flow(SlowSend())
    a, b = engine(store, wf), engine(store, wf)
    made = await a.create("send", "", {"path": str(tmp_path / "s.json"), "sleep_s": 0.3})
    stale = await b.log.load(made.run_id, lambda _r: wf)  # loaded before a moves on
    final = await a.wait(made.run_id, 30)
    assert final.status == RunStatus.SUCCEEDED
    with pytest.raises(RunFenced):
        await b.log.commit(stale, [OwnerChanged(previous=None, owner=b.owner)])
    assert stale.fenced
    assert replay(load_events(store.load(made.run_id).events)) == final
    assert sends(tmp_path / "s.json") == 1
    for e in (a, b):
        await e.close()


async def test_an_apply_slower_than_its_timeout_is_applied_exactly_once(
    store: RunStore, tmp_path: Path
) -> None:
    out = tmp_path / "sent.json"
    wf = send_flow(SlowSend(), timeout_s=0.2, grace_s=2.0)
    eng = engine(store, wf)
    created = await eng.create("send", "", {"path": str(out), "sleep_s": 0.8})
    final = await eng.wait(created.run_id, 30)
    assert final.status == RunStatus.SUCCEEDED, final.reason
    assert sends(out) == 1
    assert final.data["sent"] == {"count": 1}  # the late result still counts
    await eng.close()


async def test_an_apply_that_outlives_its_grace_goes_to_a_person(
    store: RunStore, tmp_path: Path
) -> None:
    out = tmp_path / "sent.json"
    wf = send_flow(SlowSend(), timeout_s=0.1, grace_s=0.1)
    eng = engine(store, wf)
    created = await eng.create("send", "", {"path": str(out), "sleep_s": 2.5})
    paused = await eng.wait(created.run_id, 30)
    assert paused.status == RunStatus.NEEDS_HUMAN and "outcome is unknown" in paused.reason
    assert sends(out) == 0  # not yet landed, and not sent again
    await asyncio.sleep(2.5)  # the slow call lands after all
    assert sends(out) == 1
    # A person looks, sees it was sent, and says so: nothing is sent again.
    resumed = await eng.resume(created.run_id, by="alice", effect="applied")
    final = await eng.wait(created.run_id, 30)
    assert resumed.status in (RunStatus.RUNNING, RunStatus.SUCCEEDED)
    assert final.status == RunStatus.SUCCEEDED and sends(out) == 1
    events = load_events(store.load(created.run_id).events)
    answer = [e for e in events if isinstance(e, EffectResult) and e.by == "alice"]
    assert len(answer) == 1 and answer[0].reconciled
    await eng.close()


@pytest.mark.parametrize(("answer", "extra"), [("applied", 0), ("not_applied", 1)])
async def test_a_persons_answer_applies_the_effect_the_right_number_of_times(
    store: RunStore, tmp_path: Path, answer: str, extra: int
) -> None:
    out = tmp_path / "sent.json"
    tool = SlowSend(blind=True)  # cannot verify: an unknown outcome goes to a person
    wf = send_flow(tool)
    first = engine(store, wf, runner=LosesItsExecutor(apply_first=(answer == "applied")))
    created = await first.create("send", "", {"path": str(out)})
    paused = await first.wait(created.run_id, 30)
    assert paused.status == RunStatus.NEEDS_HUMAN, paused.reason
    before = sends(out)
    assert before == (1 if answer == "applied" else 0)
    await first.resume(created.run_id, by="alice", effect=answer)  # type: ignore[arg-type]
    final = await first.wait(created.run_id, 30)
    assert final.status == RunStatus.SUCCEEDED, final.reason
    assert sends(out) == before + extra == 1
    events = load_events(store.load(created.run_id).events)
    by = [e.by for e in events if isinstance(e, EffectResult | EffectReconciled) and e.by]
    assert by == ["alice"]
    with pytest.raises(RunStateError):
        await first.resume(created.run_id, effect="applied")
    await first.close()


class LosesItsExecutor(InlineNodeRunner):
    """Reports the executor lost on the first apply, having applied it or not."""

    def __init__(self, apply_first: bool = True) -> None:
        super().__init__()
        self.apply_first = apply_first
        self.calls = 0

    async def apply_effect(self, tool, args, key, *, site):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls > 1:
            return await super().apply_effect(tool, args, key, site=site)
        if self.apply_first:
            await super().apply_effect(tool, args, key, site=site)
        raise WorkerLostError("executor lost during execute (ActorDiedError)")


async def test_a_lost_executor_is_reconciled_through_verify(
    store: RunStore, tmp_path: Path
) -> None:
    out = tmp_path / "sent.json"
    eng = engine(store, send_flow(SlowSend()), runner=LosesItsExecutor(apply_first=True))
    created = await eng.create("send", "", {"path": str(out)})
    final = await eng.wait(created.run_id, 30)
    assert final.status == RunStatus.SUCCEEDED, final.reason
    assert sends(out) == 1
    events = load_events(store.load(created.run_id).events)
    assert [e.reconciled for e in events if isinstance(e, EffectResult)] == [True]
    await eng.close()


async def test_a_run_whose_index_entry_was_left_pending_is_listed_and_driven(
    store: RunStore, tmp_path: Path
) -> None:
    """A crash between checkpoint 0 and the index update leaves the entry pending."""
    out = tmp_path / "sent.json"
    wf = send_flow(SlowSend())
    creator = engine(store, wf)
    await creator.start()
    real = store.write_index
    calls: list[str] = []

    def crash_on_second(run_id: str, entry: dict[str, Any]) -> None:
        calls.append(entry["status"])
        if len(calls) == 2:
            raise KeyboardInterrupt("the process died here")
        real(run_id, entry)

    store.write_index = crash_on_second  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        await creator.create("send", "", {"path": str(out)}, run_id="orphan-1")
    store.write_index = real  # type: ignore[method-assign]
    await creator.close()
    assert calls == [PENDING, "running"]
    assert store.read_index("orphan-1")["status"] == PENDING  # type: ignore[index]
    assert "orphan-1" in store.list_run_ids()

    survivor = engine(store, wf)
    assert await survivor.recover() == ["orphan-1"]
    final = await survivor.wait("orphan-1", 30)
    assert final.status == RunStatus.SUCCEEDED and sends(out) == 1
    assert store.read_index("orphan-1")["status"] == "succeeded"  # type: ignore[index]
    await survivor.close()


@pytest.mark.parametrize("seed", range(24))
async def test_a_run_being_created_is_not_recovered_by_its_own_engine(
    store: RunStore, tmp_path: Path, seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    """An orchestrator recovers when it starts, while its first run may be being created:
    the sweep must not take the new run for an orphan and drive it a second time (one of
    the two drivers would be fenced). And whoever is told the run succeeded finds the
    index (what ``keel runs`` lists) saying so: the state is published after the index."""
    rng = random.Random(seed)
    caplog.set_level(logging.INFO, logger="keel.engine")

    async def jittered(fn: Any, *args: Any) -> Any:
        await asyncio.sleep(rng.choice((0.0, 0.0, 0.001, 0.005, 0.02)))
        return await asyncio.to_thread(fn, *args)

    async def recover_later() -> list[str]:
        await asyncio.sleep(rng.uniform(0.0, 0.05))
        return await eng.recover()

    out = tmp_path / "sent.json"
    eng = engine(store, send_flow(SlowSend()), blocking=jittered)
    await eng.start()
    _, resumed = await asyncio.gather(
        eng.create("send", "", {"path": str(out)}, run_id="new-1"), recover_later()
    )
    final = await eng.wait("new-1", 30)
    await eng.close()
    assert resumed == [] and "stops driving" not in caplog.text
    assert final.status == RunStatus.SUCCEEDED and sends(out) == 1
    assert store.read_index("new-1")["status"] == "succeeded"  # type: ignore[index]


async def test_an_index_entry_without_checkpoint_0_is_not_a_run(store: RunStore) -> None:
    store.write_index("never-1", {"run_id": "never-1", "status": PENDING, "owner": None})
    eng = engine(store, demo)
    assert await eng.recover() == []
    await eng.close()


def test_ledger_fold_matches_engine_state(store: RunStore, tmp_path: Path) -> None:
    async def go() -> None:
        eng = engine(store, send_flow(SlowSend()))
        created = await eng.create("send", "", {"path": str(tmp_path / "s.json")})
        final = await eng.wait(created.run_id, 30)
        assert replay(load_events(store.load(created.run_id).events)) == final
        await eng.close()

    asyncio.run(go())
