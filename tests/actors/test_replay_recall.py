"""Retrievals in the ledger: what a node recalled, with scores, is recorded with the node
and replay answers the node from it, so an edited item or a node that now asks memory
something else is found. In-process: the engine on the inline runner, and in place of the
retriever pool (a Ray actor) the worker's own ranking over three runbooks (no Ray)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, JsonValue

from keel.actors import workers as workers_module
from keel.actors.replay import RECORDED, replay
from keel.actors.retriever import rank
from keel.actors.worker_messages import RetrieveRequest, RetrieveResponse
from keel.actors.workers import workers
from keel.core.events import Event, MemoryRecalled, RunStatus
from keel.core.nodes import NodeContext, NodeOutput
from keel.core.timeline import describe
from keel.core.workflow import END, Workflow
from keel.policy.engine import PolicyEngine
from keel.runtime.engine import RunEngine
from keel.runtime.inline import InlineNodeRunner
from keel.storage.local import LocalStore
from keel.storage.memory import MemoryItem
from keel.storage.runs import RunStore
from tests.conftest import TEST_POLICY


class RecallState(BaseModel):
    found: list[JsonValue] = []


def _workflow() -> Workflow:
    wf = Workflow("recalling", state=RecallState)

    @wf.node(inline=True)
    def look_up(state: RecallState, ctx: NodeContext) -> NodeOutput:
        req = RetrieveRequest(query=ctx.goal, k=2, kind="document")
        resp = workers(ctx).retriever.retrieve(req)
        return NodeOutput(
            updates={"found": [[i.id, round(i.score, 3)] for i in resp.items]},
            recalls=[resp.record(req)],
            worker=resp.worker,
        )

    wf.edge("look_up", END)
    return wf.validate()


WF = _workflow()


RUNBOOKS = [
    MemoryItem(id="rb-disk", kind="document", title="Disk full", text="no space left, rotate logs"),
    MemoryItem(id="rb-dns", kind="document", title="DNS", text="lookups fail, flush disk cache"),
    MemoryItem(id="rb-tls", kind="document", title="Expired certificate", text="renew it"),
]


class InProcessRetriever:
    """The retriever worker's ranking (``keel.actors.retriever.rank``, BM25+) over
    ``RUNBOOKS``, answered in this process as the pool would."""

    def call_sync(self, method: str, msg: Any) -> Any:
        assert method == "retrieve"
        items = rank(RUNBOOKS, msg.query, msg.k)
        return RetrieveResponse(items=items, method="bm25", worker="retriever-0")


@pytest.fixture
async def events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Event]:
    monkeypatch.setattr(workers_module, "pool", lambda role, env: InProcessRetriever())
    store = RunStore(LocalStore(tmp_path / "store", fsync=False))
    eng = RunEngine(
        store, InlineNodeRunner(), lambda _ref: WF, policy=PolicyEngine(None, TEST_POLICY)
    )
    made = await eng.create("recalling", "disk is full", {})
    final = await eng.wait(made.run_id, 30)
    assert final.status == RunStatus.SUCCEEDED, final.error
    view = await eng.view(made.run_id)
    await eng.close()
    return view.events


def test_the_retrieval_is_recorded_with_its_scores(events: list[Event]) -> None:
    recalled = [e for e in events if isinstance(e, MemoryRecalled)]
    assert len(recalled) == 1
    rec = recalled[0]
    assert (rec.node, rec.query, rec.k, rec.kind, rec.method, rec.worker) == (
        "look_up", "disk is full", 2, "document", "bm25", "retriever-0",
    )  # fmt: skip
    ranked = rank(RUNBOOKS, "disk is full", 2)
    assert [i.id for i in ranked] == ["rb-disk", "rb-dns"]  # both name the disk
    assert [(i.id, i.score) for i in rec.items] == [(i.id, i.score) for i in ranked]
    described = ", ".join(f"{i.id} {i.score:.2f}" for i in ranked)
    assert describe(rec) == ("look_up", f"recalled (bm25, retriever-0): {described}")


def test_replay_answers_from_the_ledger_and_finds_an_edited_score(
    events: list[Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers_module, "pool", _no_pool)  # replay may not call memory
    assert replay(events, WF).identical

    edited = [_edit(e, score=9.9) for e in events]
    d = replay(edited, WF).divergence
    assert d is not None and (d.node, d.what) == ("look_up", "state updates")
    assert d.recorded["found"][0][0] == "rb-disk" and d.recorded["found"][0][1] != 9.9
    assert d.replayed["found"][0] == ["rb-disk", 9.9]


def test_replay_finds_a_node_that_asks_memory_something_else(
    events: list[Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers_module, "pool", _no_pool)
    edited = [_edit(e, query="dns is broken") for e in events]
    d = replay(edited, WF).divergence
    assert d is not None and (d.node, d.what) == ("look_up", "retrieval request")
    assert d.recorded["query"] == "dns is broken" and d.replayed["query"] == "disk is full"


REAL_POOL = workers_module.pool


def _no_pool(role: str, env: Any) -> Any:
    """Only replay's own pool, which answers from the ledger; never a live one."""
    if RECORDED.get() is None:
        raise AssertionError(f"replay called the live {role} pool")
    return REAL_POOL(role, env)


def _edit(ev: Event, *, score: float | None = None, query: str | None = None) -> Event:
    if not isinstance(ev, MemoryRecalled):
        return ev
    if query is not None:
        return ev.model_copy(update={"query": query})
    first = ev.items[0].model_copy(update={"score": score})
    return ev.model_copy(update={"items": [first, *ev.items[1:]]})
