"""The ledger's events: every change to a run is one of these, appended and never edited.

Each is a frozen pydantic model with a ``type`` discriminator, so a ledger read back from
storage parses into exactly the classes that wrote it (``parse_event``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter

from keel.core.calls import CallRecord, RecallRecord


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
        default_factory=dict, description="the run's own limits (Budgets), if any"
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


class ModelCalled(_Event, CallRecord):
    """One model call, with what the router decided and what it cost. ``response`` is
    the recorded answer, so the run can be replayed without calling the model."""

    type: Literal["model_called"] = "model_called"
    node: str
    step: int
    worker: str
    response: str = ""
    request: dict[str, JsonValue] | None = None


class MemoryRecalled(_Event, RecallRecord):
    """A retrieval a node made, its items and their scores: memory the run read (never
    state), kept so replay can answer the node without the memory store."""

    type: Literal["memory_recalled"] = "memory_recalled"
    node: str
    step: int
    worker: str


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


class Approval(BaseModel):
    """An action held for a person, exactly as it will run, and (once given) the answer.

    The answer is bound to ``args_digest``: an approval of these arguments at this step
    approves nothing else.
    """

    model_config = ConfigDict(frozen=True)

    node: str
    step: int
    args_digest: str
    tool: str = ""
    resource: str | None = None
    object: str = ""
    args: dict[str, JsonValue] = Field(default_factory=dict)
    rule: list[str] = Field(default_factory=list)
    change: str = Field(default="", description="what the tool said the action will change")
    approved: bool | None = None
    principal: str | None = None


class RunPaused(_Event):
    type: Literal["run_paused"] = "run_paused"
    status: Literal[RunStatus.AWAITING_APPROVAL, RunStatus.NEEDS_HUMAN]
    reason: str
    approval: Approval | None = None


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
    | MemoryRecalled
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
