"""How ledger events read on a terminal: one line per event, user text escaped."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from rich.markup import escape

from keel.cli.common import out
from keel.core.events import Event
from keel.core.state import RunState


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
            return "", f"paused ({ev.status}): {ev.reason}"
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
                f"{ev.completion_tokens} tokens, ${ev.cost:.6f}, {ev.latency_s:.2f}s"
            )
        case "run_resumed":
            return "", f"resumed by {ev.by} {ev.reason}".rstrip()
        case "owner_changed":
            was = f" from {ev.previous}" if ev.previous else ""
            return "", f"taken over by {ev.owner}{was}" + (f": {ev.reason}" if ev.reason else "")
        case "run_finished":
            why = f": {ev.error.message}" if ev.error else f": {ev.reason}" if ev.reason else ""
            return "", f"run {ev.status}{why}"
    return "", ev.type


def print_events(events: Sequence[Event]) -> None:
    for ev in events:
        node, text = describe(ev)
        stamp = time.strftime("%H:%M:%S", time.localtime(ev.ts))
        out.print(
            f"  [dim]#{ev.seq:<3} {stamp}[/dim]  [bold]{escape(node):<14}[/bold] {escape(text)}"
        )


def _follow(keel: Any, state: RunState, after_seq: int = 0) -> RunState:
    with out.status(f"running {escape(state.workflow)} ({state.run_id})", spinner="dots"):
        return keel.watch(  # type: ignore[no-any-return]
            state.run_id, lambda evs, _st: print_events(evs), after_seq=after_seq
        )
