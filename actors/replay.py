"""Replay a run from its ledger: re-run the control logic, call nothing outside.

Walking the recorded events in order, replay folds state exactly as the orchestrator did
and checks every decision it can re-make without touching the world: nodes whose model
calls or retrievals are recorded are re-run with the planner and the retriever answering
from the ledger (so an edited response or score shows up as different state updates, and
a node that now asks memory something else shows up as a different retrieval), every
router is asked again for the next node, and every policy decision is re-made against the
policy files. The first difference is reported; otherwise the run is ``identical``.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic_core import to_jsonable_python

from keel.actors.planner import _label, label_schema, parse_proposal
from keel.actors.worker_messages import (
    ActResponse,
    ClassifyResponse,
    PlanResponse,
    RetrievedItem,
    RetrieveResponse,
)
from keel.core.calls import ModelCall
from keel.core.events import (
    Event,
    MemoryRecalled,
    ModelCalled,
    NodeCompleted,
    PolicyDecided,
    ProposalRejected,
    RunCreated,
)
from keel.core.nodes import NodeContext, NodeOutput
from keel.core.state import RunState, fold
from keel.core.workflow import Workflow
from keel.policy.engine import PolicyEngine


@dataclass
class Recording:
    """What one node's workers answered when it ran: replay answers from these."""

    calls: list[ModelCalled] = field(default_factory=list)
    recalls: list[MemoryRecalled] = field(default_factory=list)


RECORDED: contextvars.ContextVar[Recording | None] = contextvars.ContextVar(
    "keel_replay_calls", default=None
)


class Divergence(BaseModel):
    model_config = ConfigDict(frozen=True)

    seq: int
    node: str
    what: str
    recorded: Any
    replayed: Any


class ReplayReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    run_id: str
    steps: int
    divergence: Divergence | None = None

    @property
    def identical(self) -> bool:
        return self.divergence is None


class ReplayUnavailable(Exception):
    """A node asked for something the ledger does not record."""


class RecallDiffers(Exception):
    """The node asked memory something other than what the ledger recorded."""

    def __init__(self, recorded: dict[str, Any], replayed: dict[str, Any]) -> None:
        super().__init__("retrieval request")
        self.recorded, self.replayed = recorded, replayed


class ReplayPool:
    """Stands in for a worker pool during replay: the planner answers from the recorded
    model responses; nothing is called."""

    def __init__(self, role: str) -> None:
        self.role = role

    async def call(self, method: str, msg: Any) -> Any:
        return self.call_sync(method, msg)

    def call_sync(self, method: str, msg: Any) -> Any:
        recording = RECORDED.get() or Recording()
        if self.role == "retriever" and method == "retrieve":
            return self._recall(recording, msg)
        calls = recording.calls
        if self.role != "planner" or not calls:
            raise ReplayUnavailable(f"{self.role}.{method} is not recorded")
        fields = set(ModelCall.model_fields) - {"content"}
        records = [ModelCall(**c.model_dump(include=fields), content=c.response) for c in calls]
        worker = calls[-1].worker
        if method == "plan":
            proposal, errors = parse_proposal(records[-1].content)
            return PlanResponse(proposal=proposal, errors=errors, calls=records, worker=worker)
        if method == "act":
            last = records[-1]
            return ActResponse(
                content=last.content, tool_calls=last.tool_calls, calls=records, worker=worker
            )
        if method == "classify":
            label = _label(records[-1].content, label_schema(list(msg.labels))) or ""
            last = records[-1]
            return ClassifyResponse(
                label=label, confidence=last.confidence, calls=records, worker=worker
            )
        raise ReplayUnavailable(f"planner.{method} cannot be replayed")

    @staticmethod
    def _recall(recording: Recording, msg: Any) -> RetrieveResponse:
        """The node's next recorded retrieval, if it asks the same thing again."""
        if not recording.recalls:
            raise ReplayUnavailable("retriever.retrieve is not recorded")
        rec = recording.recalls.pop(0)
        fields = ("query", "k", "kind", "namespace", "tags")
        asked = {f: getattr(msg, f) for f in fields}
        recorded = {f: getattr(rec, f) for f in fields}
        if asked != recorded:
            raise RecallDiffers(recorded, asked)
        items = [RetrievedItem(**i.model_dump()) for i in rec.items]
        return RetrieveResponse(items=items, method=rec.method, worker=rec.worker)


def _settled(out: Any) -> Any:
    """An ``async def`` node's result, awaited on a loop of its own (on a thread of its own,
    as this thread may already run one), with the recording it answers from."""
    if not inspect.iscoroutine(out):
        return out
    ctx = contextvars.copy_context()
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(ctx.run, asyncio.run, out).result()


def _same(a: Any, b: Any) -> bool:
    return bool(
        json.dumps(to_jsonable_python(a), sort_keys=True)
        == json.dumps(to_jsonable_python(b), sort_keys=True)
    )


def replay(events: list[Event], wf: Workflow, policy: PolicyEngine | None = None) -> ReplayReport:
    """Walk ``events``; return the first divergence from them, or none."""
    state: RunState | None = None
    calls: list[ModelCalled] = []
    recalls: list[MemoryRecalled] = []
    rejected: set[tuple[str, int]] = set()  # (node, step) whose proposal was turned down
    steps = 0
    first = events[0]
    run_id = first.run_id if isinstance(first, RunCreated) else "?"
    for ev in events:
        if isinstance(ev, ModelCalled):
            calls.append(ev)
        elif isinstance(ev, MemoryRecalled):
            recalls.append(ev)
        elif isinstance(ev, ProposalRejected):
            rejected.add((ev.node, ev.step))
        elif isinstance(ev, PolicyDecided) and policy is not None:
            again = policy.decide(ev.subject, ev.object, ev.action)
            if again.effect != ev.effect:
                d = Divergence(
                    seq=ev.seq, node=ev.node, what="policy effect",
                    recorded=ev.effect, replayed=again.effect,
                )  # fmt: skip
                return ReplayReport(run_id=run_id, steps=steps, divergence=d)
        elif isinstance(ev, NodeCompleted) and state is not None:
            steps += 1
            mine = Recording(
                [c for c in calls if c.node == ev.node], [r for r in recalls if r.node == ev.node]
            )
            divergence = _check_node(wf, state, ev, mine, (ev.node, ev.step) in rejected)
            calls, recalls = [], []
            if divergence is not None:
                return ReplayReport(run_id=run_id, steps=steps, divergence=divergence)
        state = fold(state, ev, wf.channels)
    return ReplayReport(run_id=run_id, steps=steps)


def _check_node(
    wf: Workflow, before: RunState, ev: NodeCompleted, recorded: Recording, rejected: bool
) -> Divergence | None:
    node = wf.nodes.get(ev.node)
    if node is None:
        return Divergence(seq=ev.seq, node=ev.node, what="node", recorded=ev.node, replayed=None)
    if (recorded.calls or recorded.recalls) and not node.is_effect:
        ctx = NodeContext(
            run_id=before.run_id, workflow=wf.name, node=node.name, step=ev.step,
            attempt=ev.attempt, goal=before.goal, inputs=before.inputs,
            principal=before.principal,
        )  # fmt: skip
        token = RECORDED.set(recorded)
        try:
            out = _settled(node.fn(wf.state_of(before.data), ctx))
        except ReplayUnavailable:
            out = None
        except RecallDiffers as exc:
            return Divergence(
                seq=ev.seq, node=ev.node, what="retrieval request",
                recorded=exc.recorded, replayed=exc.replayed,
            )  # fmt: skip
        finally:
            RECORDED.reset(token)
        if out is not None:
            updates = out.updates if isinstance(out, NodeOutput) else out
            if not _same(updates, ev.updates):
                return Divergence(
                    seq=ev.seq, node=ev.node, what="state updates",
                    recorded=ev.updates, replayed=to_jsonable_python(updates),
                )  # fmt: skip
    after = fold(before, ev.model_copy(update={"next": None}), wf.channels)
    try:
        # A turned-down proposal goes where the effect node sends rejections.
        nxt = node.on_reject if rejected else wf.next_node(ev.node, wf.state_of(after.data))
    except Exception as exc:
        nxt = f"error: {exc}"
    if ev.next != nxt and not (ev.next is None and nxt is None):
        return Divergence(
            seq=ev.seq, node=ev.node, what="next node", recorded=ev.next, replayed=nxt
        )
    return None
