"""The engine's decisions as pure functions: no I/O, no clock but the one passed in.

The run loop (``actors.engine``) and the effect protocol (``actors.effects``) call these to
decide what a step produces; ``keel replay`` and the simulator call the same functions, so
a rule changes in one place.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from pydantic import BaseModel, JsonValue, ValidationError
from pydantic_core import to_jsonable_python

from keel.config import Budgets
from keel.core.calls import RecallRecord
from keel.core.events import (
    ErrorInfo,
    Event,
    MemoryRecalled,
    ModelCalled,
    NodeCompleted,
    NodeFailed,
    PolicyDecided,
    ProposalRejected,
    RunFinished,
    RunPaused,
    RunStatus,
    parse_event,
)
from keel.core.nodes import Node, NodeContext
from keel.core.state import RunState, RunSummary, fold
from keel.core.tool import Tool
from keel.core.workflow import Workflow
from keel.errors import InputError, KeelError, WorkflowError, first_error
from keel.policy.engine import Decision


@dataclass(frozen=True)
class Step:
    """One attempt at one node of one run: what every step function needs, in one value."""

    node: Node
    ctx: NodeContext
    started: float

    @property
    def key(self) -> str:
        """The idempotency key of this step's effect."""
        return effect_key(self.ctx.run_id, self.ctx.step, self.node.name, self.ctx.attempt)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"


def effect_key(run_id: str, step: int, node: str, attempt: int) -> str:
    """The idempotency key of one logical effect: run, step, node and attempt."""
    return f"{run_id}/{step}/{node}/{attempt}"


def error_info(exc: BaseException) -> ErrorInfo:
    if isinstance(exc, KeelError):
        return ErrorInfo.model_validate(exc.to_dict())
    if isinstance(exc, TimeoutError):
        return ErrorInfo(type="TimeoutError", code="node_timeout", message=str(exc), retryable=True)
    return ErrorInfo(
        type=type(exc).__name__, code="node_failed", message=str(exc) or repr(exc), retryable=True
    )


def load_events(raw: Sequence[Mapping[str, Any]]) -> list[Event]:
    return [parse_event(r) for r in raw]


def as_updates(out: Any) -> dict[str, JsonValue]:
    """Normalise what a node returned into JSON-safe state updates."""
    if out is None:
        return {}
    if isinstance(out, BaseModel):
        out = out.model_dump(mode="json", exclude_unset=True)
    if not isinstance(out, Mapping):
        raise WorkflowError(
            f"a node must return a dict of state updates, not {type(out).__name__}",
            field="updates",
        )
    result: dict[str, JsonValue] = to_jsonable_python(dict(out))
    return result


def resolve_proposal(
    node: Node, out: Any
) -> tuple[Tool | None, dict[str, Any], list[dict[str, str]]]:
    """The tool and arguments an effect node proposes. A node with one tool returns the
    arguments; a node offering several returns ``{"tool": NAME, "args": {...}}``."""
    if node.tool is not None:
        return node.tool, out if isinstance(out, dict) else {"_": out}, []
    if not isinstance(out, dict) or not isinstance(out.get("tool"), str):
        return None, {}, [{"field": "tool", "reason": "the proposal names no tool"}]
    tool = node.tool_named(out["tool"])
    if tool is None:
        offered = node.tool_names()
        return None, {}, [{"field": "tool", "reason": f"unknown tool {out['tool']!r}; {offered}"}]
    args = out.get("args", {})
    return tool, args if isinstance(args, dict) else {"_": args}, []


def bind_inputs(
    node: Node, args: dict[str, Any], inputs: Mapping[str, Any]
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The proposal's arguments with the node's bound ones set from the run's inputs, and
    an error for each bound argument the proposal tried to choose otherwise."""
    out, errors = dict(args), []
    for arg, name in node.bind.items():
        bound = inputs.get(name)
        if arg in args and args[arg] != bound:
            errors.append(
                {
                    "field": f"args.{arg}",
                    "reason": f"bound to the run's input {name!r}: a proposal cannot choose it",
                }
            )
        out[arg] = bound
    return out, errors


def normalise_args(
    tool: Tool, args: dict[str, Any], roots: Sequence[str] | None
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The arguments as the tool's own model reads them (defaults filled in, validators run
    with the deployment's tool roots in the validation context): what policy judges, a
    person approves and the tool receives. Or every error, each naming its field."""
    model = getattr(tool, "args_model", None)
    if model is None:
        return args, []
    try:
        parsed = model.model_validate(args, context={"roots": list(roots or [])})
    except ValidationError as exc:
        return args, [
            {
                "field": ".".join(["args", *(str(p) for p in err["loc"])]),
                "reason": str(err["msg"])[:300],
            }
            for err in exc.errors()
        ]
    normal: dict[str, Any] = parsed.model_dump(mode="json")
    return normal, []


def args_digest(args: dict[str, Any]) -> str:
    """What an approval is bound to: these exact arguments."""
    return hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:16]


def approved_by(state: RunState, step: Step, args: dict[str, Any]) -> str | None:
    """Who approved exactly these arguments for this step, if anyone did."""
    ap = state.approval
    if (
        ap is not None
        and ap.approved is True
        and ap.step == step.ctx.step
        and ap.node == step.node.name
        and ap.args_digest == args_digest(args)
    ):
        return str(ap.principal)
    return None


def least_confident(events: Sequence[Event]) -> ModelCalled | None:
    """The run's model call with the lowest recorded confidence, if any recorded one."""
    judged = [e for e in events if isinstance(e, ModelCalled) and e.confidence is not None]
    return min(judged, key=lambda e: e.confidence or 0.0, default=None)


def unsure(decision: Decision, events: Sequence[Event], floor: float | None) -> Decision:
    """Policy's decision on a write, given how sure the run's model answers were
    (``policy.approve_below_confidence``). Below ``floor``, a write policy lets through
    without a person (one of its exemptions) is held for one; a write held anyway keeps
    its rule and gains the confidence, so the person asked is told the model was unsure.
    It reads only the ledger, so a replayed or resumed run decides the same."""
    if floor is None or decision.effect == "deny" or decision.action != "write":
        return decision
    call = least_confident(events)
    if call is None or call.confidence is None or call.confidence >= floor:
        return decision
    why = f"{call.node} ({call.tier}) answered with confidence {call.confidence:.2f} < {floor:.2f}"
    if decision.effect == "approve":
        return decision.model_copy(update={"rule": [*decision.rule, why]})
    return decision.model_copy(
        update={"effect": "approve", "rule": ["approve_below_confidence", why]}
    )


def policy_event(decision: Decision, node: str, step: int) -> PolicyDecided:
    return PolicyDecided(
        node=node,
        step=step,
        subject=decision.subject,
        object=decision.object,
        action=decision.action,
        effect=decision.effect,
        rule=list(decision.rule),
        policy_version=decision.policy_version,
    )


def check_budgets(budgets: Mapping[str, Any] | None) -> dict[str, JsonValue]:
    """A run's own budgets, validated (an unknown or negative limit names its field)."""
    if not budgets:
        return {}
    try:
        own = Budgets.model_validate(dict(budgets))
    except ValidationError as exc:
        field, msg = first_error(exc, "budgets")
        raise InputError(f"{field}: {msg}", field=field) from None
    dumped: dict[str, JsonValue] = own.own()
    return dumped


def limits(deployment: Budgets, st: RunState) -> Budgets:
    """The deployment's budgets, tightened by the run's own."""
    if not st.budgets:
        return deployment
    return deployment.tightened(Budgets.model_validate(st.budgets))


def budget_crossed(
    b: Budgets, st: RunState, wf: Workflow, now: float
) -> tuple[str, float, float] | None:
    """The first budget this run has crossed (or would cross with its next step)."""
    node = wf.nodes.get(st.next_node or "")
    tool_calls = sum(1 for e in st.effects.values() if e.status in ("done", "failed"))
    checks: list[tuple[str, float | None, float]] = [
        ("max_steps", b.max_steps, st.step + 1),
        (
            "max_tool_calls",
            b.max_tool_calls,
            tool_calls + (1 if node is not None and node.is_effect else 0),
        ),
        ("max_model_calls", b.max_model_calls, st.usage.model_calls),
        ("max_cost", b.max_cost, st.usage.cost),
        ("max_wall_s", b.max_wall_s, round(now - st.created_at, 3)),
    ]
    for name, limit, value in checks:
        if limit is not None and value > limit:
            return name, float(limit), float(value)
    return None


def model_event(call: Any, node: str, step: int, worker: str) -> ModelCalled:
    """A worker's ``ModelCall`` as a ledger event (the answer kept for replay, capped)."""
    data = call.model_dump() if isinstance(call, BaseModel) else dict(call)
    response = str(data.pop("content", ""))[:20_000]
    data.pop("logprobs", None)  # the confidence they gave is recorded, not every token
    return ModelCalled(node=node, step=step, worker=worker, response=response, **data)


def recall_event(record: RecallRecord, node: str, step: int, worker: str) -> MemoryRecalled:
    """A node's retrieval as a ledger event."""
    return MemoryRecalled(node=node, step=step, worker=worker, **record.model_dump())


def completion(
    wf: Workflow,
    state: RunState,
    step: Step,
    updates: dict[str, JsonValue],
    *,
    worker: str = "task",
    handoff: str | None = None,
    duration_s: float = 0.0,
) -> list[Event]:
    """The events that complete a node: its updates, where the run goes next, and whether
    the run ends or is handed to a person.

    Raises:
        WorkflowError: an update names no state field, or the routing failed.
    """
    fields = wf.state_model.model_fields
    if wf.state_model.model_config.get("extra") != "allow":
        for name in updates:
            if name not in fields:
                raise WorkflowError(
                    f"node {step.node.name!r} returned unknown state field {name!r}",
                    field=f"updates.{name}",
                )
    done = NodeCompleted(
        node=step.node.name,
        step=step.ctx.step,
        attempt=step.ctx.attempt,
        updates=updates,
        next=None,
        duration_s=duration_s,
        worker=worker,
    )
    preview = fold(state, done, wf.channels)
    nxt = wf.next_node(step.node.name, wf.state_of(preview.data))
    events: list[Event] = [done.model_copy(update={"next": nxt})]
    if handoff:
        events.append(RunPaused(status=RunStatus.NEEDS_HUMAN, reason=handoff))
    elif nxt is None:
        events.append(RunFinished(status=RunStatus.SUCCEEDED))
    return events


def failure(step: Step, info: ErrorInfo, duration_s: float) -> tuple[list[Event], float | None]:
    """The events for a failed attempt, and the delay before the next one (None: the run
    fails)."""
    node, ctx = step.node, step.ctx
    retry = info.retryable and ctx.attempt < node.retry.attempts
    delay = node.retry.delay(ctx.attempt) if retry else None
    failed = NodeFailed(
        node=node.name,
        step=ctx.step,
        attempt=ctx.attempt,
        error=info,
        retry_in_s=delay,
        duration_s=duration_s,
    )
    if delay is not None:
        return [failed], delay
    finished = RunFinished(status=RunStatus.FAILED, error=info, reason=f"node {node.name} failed")
    return [failed, finished], None


def rejection(
    state: RunState,
    step: Step,
    errors: list[dict[str, str]],
    max_rejections: int | None,
    duration_s: float,
) -> list[Event]:
    """A proposal failed validation or policy: back to the planner with the errors, or to a
    person once there have been too many, or the run fails where nobody can re-plan."""
    node, ctx = step.node, step.ctx
    rejected = ProposalRejected(node=node.name, step=ctx.step, errors=errors)
    summary_ = "; ".join(f"{e['field']}: {e['reason']}" for e in errors)[:500]
    if max_rejections is not None and state.rejections + 1 > max_rejections:
        reason = (
            f"{state.rejections + 1} proposals rejected (limit {max_rejections}); last: {summary_}"
        )
        return [rejected, RunPaused(status=RunStatus.NEEDS_HUMAN, reason=reason)]
    if node.on_reject is not None:
        updates: dict[str, JsonValue] = {}
        if node.rejections_field:
            updates[node.rejections_field] = cast(JsonValue, errors)
        back = NodeCompleted(
            node=node.name,
            step=ctx.step,
            attempt=ctx.attempt,
            updates=updates,
            next=node.on_reject,
            duration_s=duration_s,
            worker="validator",
        )
        return [rejected, back]
    info = ErrorInfo(type="PolicyError", code="policy", message=f"proposal rejected: {summary_}")
    return [rejected, RunFinished(status=RunStatus.FAILED, error=info, reason=info.message)]


def summary(state: RunState, owner: str | None = None) -> RunSummary:
    """The index entry of a run: enough to list and filter runs without loading them."""
    return RunSummary(
        run_id=state.run_id,
        workflow=state.workflow,
        status=str(state.status),
        goal=state.goal[:200],
        created_at=state.created_at,
        updated_at=state.updated_at,
        reason=state.reason[:500],
        principal=state.principal,
        owner=owner,
    )
