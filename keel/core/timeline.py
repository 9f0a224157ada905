"""A run's ledger as people read it: one line per event, the columns an operator scans
(worker, tier, policy rule, tool, effect), and the tree of nodes with what happened inside
each. The CLI prints these and the web console renders them, so both say the same thing."""

from __future__ import annotations

import json
from collections.abc import Sequence

from pydantic import BaseModel, Field

from keel.core.events import Event, ModelCalled


def _describe_effect(ev: Event) -> tuple[str, str]:
    match ev.type:
        case "effect_intent":
            return ev.node, f"intent {ev.tool} key={ev.key}"
        case "effect_result":
            how = " (found by verify)" if ev.reconciled else ""
            what = json.dumps(ev.result) if ev.ok else ev.error.message if ev.error else ""
            return "", f"effect {'ok' if ev.ok else 'FAILED'}{how}: {what[:80]}"
        case "effect_reconciled":
            return "", f"verify: effect {ev.key} {'applied' if ev.applied else 'not applied'}"
    return "", ev.type


def _sure(ev: ModelCalled) -> str:
    """How sure the answer was, and the floor it was judged against, where recorded."""
    if ev.confidence is None:
        return ""
    floor = "" if ev.confidence_floor is None else f" (floor {ev.confidence_floor:.2f})"
    return f", confidence {ev.confidence:.2f}{floor}"


def describe(ev: Event) -> tuple[str, str]:
    """The node an event is about and a one-line description of it."""
    match ev.type:
        case "run_created":
            return "", f"run created: workflow {ev.workflow}, goal {ev.goal[:60]!r}"
        case "node_completed":
            nxt = ev.next or "end"
            keys = ", ".join(sorted(ev.updates)) or "no updates"
            return ev.node, f"completed in {ev.duration_s:.3f}s ({keys}) -> {nxt}"
        case "node_failed":
            retry = f"retry in {ev.retry_in_s:.1f}s" if ev.retry_in_s is not None else "no retry"
            return ev.node, f"attempt {ev.attempt} failed: {ev.error.message} ({retry})"
        case "effect_intent" | "effect_result" | "effect_reconciled":
            return _describe_effect(ev)
        case "run_paused":
            change = ev.approval.change if ev.approval else ""
            return "", f"paused ({ev.status}): {ev.reason}" + (f" [{change}]" if change else "")
        case "policy_decided":
            rule = ", ".join(ev.rule)
            return ev.node, f"policy {ev.effect}: {ev.subject} {ev.action} {ev.object} [{rule}]"
        case "proposal_rejected":
            errs = "; ".join(f"{e['field']}: {e['reason']}" for e in ev.errors)
            return ev.node, f"proposal rejected: {errs}"
        case "approval_decided":
            verdict = "approved" if ev.approved else "rejected"
            return ev.node, f"{verdict} by {ev.principal} {ev.reason}".rstrip()
        case "budget_exceeded":
            return "", f"budget {ev.budget} exceeded: {ev.value:g} > {ev.limit:g}"
        case "model_called":
            fns = [c.get("function") or {} for c in ev.tool_calls]
            calls = ", ".join(f"{f.get('name')} {f.get('arguments')}" for f in fns)
            return ev.node, (
                f"model {ev.model} via {ev.tier}{f' calls {calls}' if calls else ''} "
                f"({ev.worker}): {ev.prompt_tokens}+"
                f"{ev.completion_tokens} tokens, ${ev.cost:.6f}, {ev.latency_s:.2f}s{_sure(ev)}"
            )
        case "memory_recalled":
            found = ", ".join(f"{i.id} {i.score:.2f}" for i in ev.items) or "nothing"
            return ev.node, f"recalled ({ev.method}, {ev.worker}): {found}"
        case "run_resumed":
            return "", f"resumed by {ev.by} {ev.reason}".rstrip()
        case "owner_changed":
            was = f" from {ev.previous}" if ev.previous else ""
            return "", f"taken over by {ev.owner}{was}" + (f": {ev.reason}" if ev.reason else "")
        case "run_finished":
            why = f": {ev.error.message}" if ev.error else f": {ev.reason}" if ev.reason else ""
            return "", f"run {ev.status}{why}"
    return "", ev.type


class TimelineRow(BaseModel):
    """One ledger event, split into the columns an operator filters by eye."""

    seq: int
    ts: float
    type: str
    node: str
    text: str
    worker: str = ""
    tier: str = ""
    rule: str = ""
    tool: str = ""
    outcome: str = Field(default="", description="ok, failed, denied, rejected, ...: for colour")


def _outcome(ev: Event) -> str:
    match ev.type:
        case "effect_result":
            return "ok" if ev.ok else "failed"
        case "policy_decided":
            return str(ev.effect)
        case "approval_decided":
            return "approved" if ev.approved else "rejected"
        case "proposal_rejected" | "node_failed" | "budget_exceeded":
            return "failed"
        case "run_finished" | "run_paused":
            return str(ev.status)
    return ""


def timeline_row(ev: Event, tools: dict[str, str] | None = None) -> TimelineRow:
    """``tools`` maps effect keys to tool names, so a result names the tool of its intent."""
    node, text = describe(ev)
    row = TimelineRow(seq=ev.seq, ts=ev.ts, type=ev.type, node=node, text=text)
    row.outcome = _outcome(ev)
    match ev.type:
        case "model_called":
            row.worker, row.tier = ev.worker, ev.tier
            names = [(c.get("function") or {}).get("name", "") for c in ev.tool_calls]
            row.tool = ", ".join(n for n in names if n)
        case "node_completed":
            row.worker = ev.worker
        case "policy_decided":
            row.rule = ", ".join(ev.rule)
        case "effect_intent":
            row.tool = ev.tool
        case "effect_result" | "effect_reconciled":
            row.tool = (tools or {}).get(ev.key, "")
    return row


def timeline(events: Sequence[Event]) -> list[TimelineRow]:
    tools: dict[str, str] = {}
    rows = []
    for ev in events:
        if ev.type == "effect_intent":
            tools[ev.key] = ev.tool
        rows.append(timeline_row(ev, tools))
    return rows


class TraceNode(BaseModel):
    """A node that ran, how long it took, and what happened inside it; or, with no
    duration, something that happened to the run itself (a pause, an approval, the end)."""

    label: str
    duration_ms: float | None = None
    inner: list[str] = Field(default_factory=list)


INSIDE = ("model_called", "policy_decided", "effect_result", "proposal_rejected")
OF_THE_RUN = ("run_paused", "run_finished", "budget_exceeded", "approval_decided")


def trace_tree(events: Sequence[Event]) -> list[TraceNode]:
    """The ledger as a tree: the events a node produced are recorded before its
    completion, so each ``node_completed`` collects the inner events since the last one."""
    tree: list[TraceNode] = []
    pending: list[str] = []
    for ev in events:
        if ev.type == "node_completed":
            tree.append(TraceNode(label=ev.node, duration_ms=ev.duration_s * 1000, inner=pending))
            pending = []
        elif ev.type in INSIDE:
            pending.append(describe(ev)[1])
        elif ev.type in OF_THE_RUN:
            tree.append(TraceNode(label=describe(ev)[1]))
    return tree
