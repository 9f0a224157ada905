"""Run state, and the reducers that fold the ledger's events into it (``keel.core.events``).

``RunState`` is never edited in place: the orchestrator appends events to the ledger and
folds each one in with ``fold``, whose per-event reducers are listed in ``REDUCERS``. Loading
a run is folding its ledger from the start, so state after a crash equals state before it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from keel.core.events import (
    Approval,
    ApprovalDecided,
    BudgetExceeded,
    EffectIntent,
    EffectReconciled,
    EffectResult,
    ErrorInfo,
    Event,
    MemoryRecalled,
    ModelCalled,
    NodeCompleted,
    NodeFailed,
    OwnerChanged,
    PolicyDecided,
    ProposalRejected,
    RunCreated,
    RunFinished,
    RunPaused,
    RunResumed,
    RunStatus,
)
from keel.errors import RunStateError

Reducer = Callable[[Any, Any], Any]


class EffectRecord(BaseModel):
    """An external effect as state knows it: intended, then done (or failed)."""

    model_config = ConfigDict(frozen=True)

    key: str
    node: str
    step: int
    tool: str
    args: dict[str, JsonValue]
    status: Literal["pending", "done", "failed", "not_applied"] = "pending"
    result: JsonValue = None
    reconciled: bool = False


class Usage(BaseModel):
    """Model use so far in a run: the sums of its ``model_called`` events."""

    model_config = ConfigDict(frozen=True)

    model_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0


class RunState(BaseModel):
    """What is true about one run. Changed only by ``fold``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    workflow: str
    workflow_ref: str
    fingerprint: str
    goal: str
    inputs: dict[str, JsonValue]
    principal: str
    budgets: dict[str, JsonValue] = Field(default_factory=dict)
    status: RunStatus = RunStatus.RUNNING
    next_node: str | None
    step: int = 0
    attempt: int = 1
    data: dict[str, JsonValue] = Field(default_factory=dict)
    effects: dict[str, EffectRecord] = Field(default_factory=dict)
    usage: Usage = Field(default_factory=Usage)
    rejections: int = 0
    approval: Approval | None = Field(
        default=None, description="the approval asked for or granted at the current step"
    )
    last_seq: int = 0
    reason: str = ""
    error: ErrorInfo | None = None
    created_at: float
    updated_at: float

    def pending_effect(self) -> EffectRecord | None:
        """The effect intended for the current step whose outcome is not yet known."""
        for eff in self.effects.values():
            if eff.status == "pending" and eff.step == self.step and eff.node == self.next_node:
                return eff
        return None

    def effect_to_retry(self) -> EffectRecord | None:
        """The effect of the current step known not to have happened: it runs again as
        recorded (same key, same arguments) rather than being proposed anew."""
        for eff in self.effects.values():
            if eff.status == "not_applied" and eff.step == self.step and eff.node == self.next_node:
                return eff
        return None


# Channel reducers a workflow state field may declare with ``Annotated[T, reducer]``.


class RunSummary(BaseModel):
    """A run's index entry: enough to list and filter runs without loading them. It is a
    hint: the checkpoints decide, and a ``pending`` entry may name a run that never began.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    run_id: str
    workflow: str
    status: str = Field(description="a RunStatus, or 'pending' before checkpoint 0")
    goal: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    reason: str = ""
    principal: str = "local"
    owner: str | None = None


def replace(_old: Any, new: Any) -> Any:
    return new


def append(old: Any, new: Any) -> Any:
    """Lists grow: ``new`` (an item or a list of items) is added at the end."""
    items = new if isinstance(new, list) else [new]
    return [*(old or []), *items]


def merge(old: Any, new: Any) -> Any:
    return {**(old or {}), **(new or {})}


def add(old: Any, new: Any) -> Any:
    return (old or 0) + new


Channels = Mapping[str, Reducer]


def _created(state: RunState | None, ev: RunCreated, _: Channels) -> RunState:
    if state is not None:
        raise RunStateError(f"run {ev.run_id} created twice", run_id=ev.run_id)
    return RunState(
        run_id=ev.run_id,
        workflow=ev.workflow,
        workflow_ref=ev.workflow_ref,
        fingerprint=ev.fingerprint,
        goal=ev.goal,
        inputs=ev.inputs,
        principal=ev.principal,
        budgets=ev.budgets,
        next_node=ev.start,
        data=ev.data,
        last_seq=ev.seq,
        created_at=ev.ts,
        updated_at=ev.ts,
    )


def _node_completed(state: RunState, ev: NodeCompleted, channels: Channels) -> RunState:
    data = dict(state.data)
    for name, value in ev.updates.items():
        data[name] = channels.get(name, replace)(data.get(name), value)
    return state.model_copy(
        update={
            "data": data,
            "next_node": ev.next,
            "step": state.step + 1,
            "attempt": 1,
            "approval": None,
        }
    )


def _node_failed(state: RunState, ev: NodeFailed, _: Channels) -> RunState:
    return state.model_copy(update={"attempt": ev.attempt + 1, "error": ev.error})


def _effect_intent(state: RunState, ev: EffectIntent, _: Channels) -> RunState:
    rec = EffectRecord(key=ev.key, node=ev.node, step=ev.step, tool=ev.tool, args=ev.args)
    return state.model_copy(update={"effects": {**state.effects, ev.key: rec}})


def _effect_result(state: RunState, ev: EffectResult, _: Channels) -> RunState:
    rec = state.effects.get(ev.key)
    if rec is None:
        raise RunStateError(f"result for unknown effect {ev.key}", key=ev.key)
    done = rec.model_copy(
        update={
            "status": "done" if ev.ok else "failed",
            "result": ev.result,
            "reconciled": ev.reconciled,
        }
    )
    return state.model_copy(update={"effects": {**state.effects, ev.key: done}})


def _effect_reconciled(state: RunState, ev: EffectReconciled, _: Channels) -> RunState:
    rec = state.effects.get(ev.key)
    if rec is None:
        raise RunStateError(f"reconciliation of unknown effect {ev.key}", key=ev.key)
    if ev.applied:
        return state
    gone = rec.model_copy(update={"status": "not_applied", "reconciled": True})
    return state.model_copy(update={"effects": {**state.effects, ev.key: gone}})


def _model_called(state: RunState, ev: ModelCalled, _: Channels) -> RunState:
    u = state.usage
    usage = Usage(
        model_calls=u.model_calls + 1,
        prompt_tokens=u.prompt_tokens + ev.prompt_tokens,
        completion_tokens=u.completion_tokens + ev.completion_tokens,
        cost=u.cost + ev.cost,
    )
    return state.model_copy(update={"usage": usage})


def _policy_decided(state: RunState, ev: PolicyDecided, _: Channels) -> RunState:
    return state


def _memory_recalled(state: RunState, ev: MemoryRecalled, _: Channels) -> RunState:
    """Memory helps a node reason and never changes state by itself: only the node's own
    updates, committed with it, do."""
    return state


def _proposal_rejected(state: RunState, ev: ProposalRejected, _: Channels) -> RunState:
    return state.model_copy(update={"rejections": state.rejections + 1})


def _approval_decided(state: RunState, ev: ApprovalDecided, _: Channels) -> RunState:
    answer = {"approved": ev.approved, "principal": ev.principal}
    asked = state.approval
    if asked is None or (asked.node, asked.step, asked.args_digest) != (
        ev.node,
        ev.step,
        ev.args_digest,
    ):
        asked = Approval(node=ev.node, step=ev.step, args_digest=ev.args_digest)
    return state.model_copy(update={"approval": asked.model_copy(update=answer)})


def _budget_exceeded(state: RunState, ev: BudgetExceeded, _: Channels) -> RunState:
    return state


def _paused(state: RunState, ev: RunPaused, _: Channels) -> RunState:
    update: dict[str, Any] = {"status": ev.status, "reason": ev.reason}
    if ev.approval is not None:
        update["approval"] = ev.approval
    return state.model_copy(update=update)


def _resumed(state: RunState, ev: RunResumed, _: Channels) -> RunState:
    return state.model_copy(update={"status": RunStatus.RUNNING, "reason": ""})


def _owner_changed(state: RunState, ev: OwnerChanged, _: Channels) -> RunState:
    return state


def _finished(state: RunState, ev: RunFinished, _: Channels) -> RunState:
    return state.model_copy(
        update={
            "status": ev.status,
            "error": ev.error,
            "reason": ev.reason,
            "next_node": None if ev.status == RunStatus.SUCCEEDED else state.next_node,
        }
    )


REDUCERS: dict[str, Callable[[Any, Any, Channels], RunState]] = {
    "run_created": _created,
    "node_completed": _node_completed,
    "node_failed": _node_failed,
    "effect_intent": _effect_intent,
    "effect_result": _effect_result,
    "effect_reconciled": _effect_reconciled,
    "model_called": _model_called,
    "memory_recalled": _memory_recalled,
    "policy_decided": _policy_decided,
    "proposal_rejected": _proposal_rejected,
    "approval_decided": _approval_decided,
    "budget_exceeded": _budget_exceeded,
    "run_paused": _paused,
    "run_resumed": _resumed,
    "owner_changed": _owner_changed,
    "run_finished": _finished,
}


def fold(state: RunState | None, event: Event, channels: Channels | None = None) -> RunState:
    """Apply one event. The only function that produces a new ``RunState``."""
    if state is None and event.type != "run_created":
        raise RunStateError(f"ledger must start with run_created, not {event.type}")
    if state is not None and state.status.terminal:
        raise RunStateError(
            f"run {state.run_id} is {state.status}; event {event.type} cannot follow",
            run_id=state.run_id,
        )
    new = REDUCERS[event.type](state, event, channels or {})
    return new.model_copy(update={"last_seq": event.seq, "updated_at": event.ts})


def replay(events: list[Event], channels: Channels | None = None) -> RunState:
    """Rebuild state from a whole ledger."""
    state: RunState | None = None
    for ev in events:
        state = fold(state, ev, channels)
    if state is None:
        raise RunStateError("empty ledger")
    return state
