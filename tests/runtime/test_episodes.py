"""Episodic memory read back: a run's episode, recalled by a later run of the same
principal on the same target, changes what the later run decides (it does not repeat an
action that did not help), and never what counts as done. In-process: the engine on the
inline runner, and in place of the retriever pool (a Ray actor) the worker's own selection
and ranking (``keel.actors.retriever.retrieve``) over the real memory store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, JsonValue

from keel.actors import workers as workers_module
from keel.actors.replay import replay
from keel.actors.retriever import retrieve
from keel.actors.worker_messages import RetrieveRequest, RetrieveResponse
from keel.actors.workers import Workers, workers
from keel.core.events import Event, MemoryRecalled, RunStatus
from keel.core.nodes import NodeContext, NodeOutput
from keel.core.state import RunState
from keel.core.workflow import END, Workflow
from keel.errors import PolicyError, WorkflowError
from keel.policy.engine import PolicyEngine
from keel.runtime.engine import RunEngine
from keel.runtime.episodes import FACTS, EpisodeFacts, episode
from keel.runtime.inline import InlineNodeRunner
from keel.storage.local import LocalStore
from keel.storage.memory import MemoryIndex, MemoryItem, MemoryStore
from keel.storage.runs import RunStore
from tests.actors.workflows import CounterTool, counter
from tests.conftest import TEST_POLICY


class FixState(BaseModel):
    healthy: bool | None = None
    charged: JsonValue = None
    avoided: str = ""


class FixInputs(BaseModel):
    dir: str


def _workflow() -> Workflow:
    wf = Workflow("learner", state=FixState, inputs=FixInputs, signals=("healthy",))

    @wf.node(inline=True)
    def remember(state: FixState, ctx: NodeContext) -> NodeOutput:
        req = RetrieveRequest(
            query=ctx.goal,
            k=3,
            kind="episode",
            namespace=ctx.principal,
            tags=["learner", f"dir={ctx.inputs['dir']}"],
        )
        resp = workers(ctx).retriever.retrieve(req)
        facts = [f for i in resp.items if (f := EpisodeFacts.of(i.text)) is not None]
        failed = [f.run_id for f in facts if f.applied(["charge"]) and not f.signals["healthy"]]
        return NodeOutput(
            updates={"avoided": failed[0] if failed else ""},
            recalls=[resp.record(req)],
            worker=resp.worker,
        )

    wf.route("remember", lambda s: "give_up" if s.avoided else "fix", ["give_up", "fix"])

    @wf.effect(CounterTool("charge"), role="mitigate", result_field="charged")
    def fix(state: FixState, ctx: NodeContext) -> dict[str, Any]:
        return {"path": str(Path(str(ctx.inputs["dir"])) / "charge.json")}

    wf.edge("fix", "check")

    @wf.node(inline=True)
    def check(state: FixState, ctx: NodeContext) -> NodeOutput:
        return NodeOutput(updates={"healthy": False}, handoff="the fix did not help")

    wf.edge("check", END)

    @wf.node(inline=True)
    def give_up(state: FixState, ctx: NodeContext) -> NodeOutput:
        return NodeOutput(handoff=f"run {state.avoided} applied the fix and it did not help")

    wf.edge("give_up", END)
    return wf.validate()


WF = _workflow()
REAL_POOL = workers_module.pool


class InProcessRetriever:
    """The retriever worker's selection and ranking, answered in this process."""

    def __init__(self, memory: MemoryIndex) -> None:
        self.memory = memory

    def call_sync(self, method: str, msg: Any) -> Any:
        assert method == "retrieve"
        return RetrieveResponse(items=retrieve(self.memory, msg), method="bm25", worker="r-0")


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunStore:
    runs = RunStore(LocalStore(tmp_path / "store", fsync=False))
    memory = MemoryStore(runs.store)
    index = MemoryIndex(memory)
    monkeypatch.setattr(workers_module, "pool", lambda role, env: InProcessRetriever(index))
    return runs


async def _run(store: RunStore, target: Path, principal: str) -> tuple[RunState, list[Event]]:
    eng = RunEngine(
        store, InlineNodeRunner(), lambda _ref: WF, policy=PolicyEngine(None, TEST_POLICY)
    )
    try:
        made = await eng.create(
            "learner", "the service is down, fix it", {"dir": str(target)}, principal=principal
        )
        final = await eng.wait(made.run_id, 30)
        return final, (await eng.view(made.run_id)).events
    finally:
        await eng.close()


async def test_a_second_run_does_not_repeat_what_did_not_help(
    store: RunStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = await _run(store, tmp_path, "carol")
    assert first.status == RunStatus.NEEDS_HUMAN and first.reason == "the fix did not help"
    assert counter(tmp_path / "charge.json") == 1

    second, events = await _run(store, tmp_path, "carol")
    assert second.status == RunStatus.NEEDS_HUMAN
    assert second.reason == f"run {first.run_id} applied the fix and it did not help"
    assert counter(tmp_path / "charge.json") == 1  # the tool's own count: not applied again
    assert second.step < first.step
    # Memory is not state: nothing the first run did counts as done in the second.
    assert second.data["charged"] is None and second.data["healthy"] is None
    (recalled,) = [e for e in events if isinstance(e, MemoryRecalled)]
    assert [i.id for i in recalled.items] == [first.run_id]
    assert (recalled.namespace, recalled.tags) == ("carol", ["learner", f"dir={tmp_path}"])
    monkeypatch.setattr(workers_module, "pool", REAL_POOL)  # replay answers from the ledger
    MemoryStore(store.store).delete("episode", first.run_id, "carol")  # and needs no memory
    assert replay(events, WF).identical

    # What the ledger recorded is what replay checks: asking another namespace diverges.
    edited = [
        e.model_copy(update={"namespace": "dave"}) if isinstance(e, MemoryRecalled) else e
        for e in events
    ]
    d = replay(edited, WF).divergence
    assert d is not None and (d.node, d.what) == ("remember", "retrieval request")
    assert (d.recorded["namespace"], d.replayed["namespace"]) == ("dave", "carol")


async def test_episodes_stay_with_their_principal_and_their_target(
    store: RunStore, tmp_path: Path
) -> None:
    await _run(store, tmp_path, "carol")
    other, _ = await _run(store, tmp_path, "erin")  # another tenant: no shared history
    assert other.reason == "the fix did not help"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved, _ = await _run(store, elsewhere, "carol")  # another target: not the same service
    assert moved.reason == "the fix did not help"
    assert counter(tmp_path / "charge.json") == 2 and counter(elsewhere / "charge.json") == 1


def test_a_run_reads_shared_memory_and_its_principals_never_anothers(
    store: RunStore,
) -> None:
    handle = Workers({}, None, "carol").retriever
    for namespace in ("shared", "carol"):
        assert handle.retrieve(RetrieveRequest(query="q", namespace=namespace)).items == []
    with pytest.raises(PolicyError) as info:
        handle.retrieve(RetrieveRequest(query="q", namespace="alice"))
    assert info.value.field == "namespace"


def test_the_facts_line_survives_the_ledgers_cap_and_others_have_none() -> None:
    state = RunState(
        run_id="r1",
        workflow="learner",
        workflow_ref="learner",
        fingerprint="f",
        inputs={},
        next_node=None,
        created_at=0.0,
        updated_at=0.0,
        goal="g",
        status=RunStatus.FAILED,
        principal="carol",
        data={"healthy": False, "huge": "x" * 10_000},
    )
    item = episode(state, [], signals=("healthy", "huge"))
    assert item is not None and item.text.startswith(FACTS)
    facts = EpisodeFacts.of(item.text[:4000])
    assert facts is not None and facts.signals == {"healthy": False}  # too big: left out
    doc = MemoryItem(id="rb", kind="document", text="facts: not json")
    assert EpisodeFacts.of(doc.text) is None
    with pytest.raises(WorkflowError) as info:
        Workflow("w", state=FixState, signals=("nope",))
    assert info.value.field == "signals"
