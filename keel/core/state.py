"""Run state and the ledger events that are the only way to change it.

``RunState`` is never edited in place: the orchestrator appends events to the ledger and
folds each one in with ``fold``, whose per-event reducers are listed in ``REDUCERS``. Loading
a run is folding its ledger from the start, so state after a crash equals state before it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter

from keel.errors import RunStateError

Reducer = Callable[[Any, Any], Any]


class RunStatus(StrEnum):
    RUNNING = "running"
    AWAITING_APPROVAL = "awaiting_approval"
    NEEDS_HUMAN = "needs_human"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


class ErrorInfo(BaseModel):
    """An error as the ledger keeps it."""

    model_config = ConfigDict(frozen=True)

    type: str
    code: str
    message: str
    retryable: bool = False
    field: str | None = None
    context: dict[str, JsonValue] = Field(default_factory=dict)


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    seq: int = -1
    ts: float = Field(default_factory=time.time)
    trace_id: str | None = None
    span_id: str | None = None


class RunCreated(_Event):
    type: Literal["run_created"] = "run_created"
    run_id: str
    workflow: str
    workflow_ref: str
    fingerprint: str
    start: str
    goal: str
    inputs: dict[str, JsonValue]
    data: dict[str, JsonValue]
    principal: str = "local"
    budgets: dict[str, JsonValue] = Field(
        default_factory=dict, description="the run's own limits (RunBudgets), if any"
    )


class NodeCompleted(_Event):
    type: Literal["node_completed"] = "node_completed"
    node: str
    step: int
    attempt: int
    updates: dict[str, JsonValue]
    next: str | None
    duration_s: float
    worker: str = "task"


class NodeFailed(_Event):
    type: Literal["node_failed"] = "node_failed"
    node: str
    step: int
    attempt: int
    error: ErrorInfo
    retry_in_s: float | None
    duration_s: float


class EffectIntent(_Event):
    type: Literal["effect_intent"] = "effect_intent"
    node: str
    step: int
    attempt: int
    key: str
    tool: str
    args: dict[str, JsonValue]


class EffectResult(_Event):
    type: Literal["effect_result"] = "effect_result"
    key: str
    ok: bool
    result: JsonValue = None
    error: ErrorInfo | None = None
    reconciled: bool = False
    duration_s: float = 0.0
    by: str | None = Field(default=None, description="the person who said it was applied")


class EffectReconciled(_Event):
    """The effect is known not to have happened (the tool's ``verify()`` or a person said
    so): it runs again, under the same key and with the same arguments."""

    type: Literal["effect_reconciled"] = "effect_reconciled"
    key: str
    applied: bool
    detail: str = ""
    by: str | None = Field(default=None, description="the person who answered, if one did")


class ModelCalled(_Event):
    """One model call, with what the router decided and what it cost. ``response`` is
    the recorded answer, so the run can be replayed without calling the model."""

    type: Literal["model_called"] = "model_called"
    node: str
    step: int
    worker: str
    tier: str
    routed_tier: str
    model: str
    reason: str
    score: float
    prompt_tokens: int
    completion_tokens: int
    cost: float
    latency_s: float
    fallbacks: int = 0
    escalated_from: str | None = None
    response: str = ""
    request: dict[str, JsonValue] | None = None


class PolicyDecided(_Event):
    """A policy decision on an action, with the rule that decided and the policy version."""

    type: Literal["policy_decided"] = "policy_decided"
    node: str
    step: int
    subject: str
    object: str
    action: str
    effect: Literal["allow", "deny", "approve"]
    rule: list[str]
    policy_version: str


class ProposalRejected(_Event):
    """A proposed action that failed validation or policy; each error names its field."""

    type: Literal["proposal_rejected"] = "proposal_rejected"
    node: str
    step: int
    errors: list[dict[str, str]]


class ApprovalDecided(_Event):
    type: Literal["approval_decided"] = "approval_decided"
    node: str
    step: int
    approved: bool
    principal: str
    reason: str = ""
    args_digest: str


class BudgetExceeded(_Event):
    type: Literal["budget_exceeded"] = "budget_exceeded"
    budget: str
    limit: float
    value: float


class RunPaused(_Event):
    type: Literal["run_paused"] = "run_paused"
    status: Literal[RunStatus.AWAITING_APPROVAL, RunStatus.NEEDS_HUMAN]
    reason: str
    approval: dict[str, JsonValue] | None = None


class RunResumed(_Event):
    type: Literal["run_resumed"] = "run_resumed"
    by: str
    reason: str = ""


class OwnerChanged(_Event):
    """Another engine took the run over, because its previous driver's lease had expired."""

    type: Literal["owner_changed"] = "owner_changed"
    previous: str | None
    owner: str
    reason: str = ""


class RunFinished(_Event):
    type: Literal["run_finished"] = "run_finished"
    status: Literal[RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED]
    error: ErrorInfo | None = None
    reason: str = ""


Event = Annotated[
    RunCreated
    | NodeCompleted
    | NodeFailed
    | EffectIntent
    | EffectResult
    | EffectReconciled
    | ModelCalled
    | PolicyDecided
    | ProposalRejected
    | ApprovalDecided
    | BudgetExceeded
    | RunPaused
    | RunResumed
    | OwnerChanged
    | RunFinished,
    Field(discriminator="type"),
]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(raw: Mapping[str, Any]) -> Event:
    return EVENT_ADAPTER.validate_python(raw)


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
    approval: dict[str, JsonValue] | None = Field(
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


def _proposal_rejected(state: RunState, ev: ProposalRejected, _: Channels) -> RunState:
    return state.model_copy(update={"rejections": state.rejections + 1})


def _approval_decided(state: RunState, ev: ApprovalDecided, _: Channels) -> RunState:
    approval: dict[str, JsonValue] = {
        "node": ev.node,
        "step": ev.step,
        "approved": ev.approved,
        "principal": ev.principal,
        "args_digest": ev.args_digest,
    }
    return state.model_copy(update={"approval": approval})


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
