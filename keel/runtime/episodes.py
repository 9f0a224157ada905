"""Episodic memory: at a run's end, a summary of what it tried and how it ended, written to
the memory of the tenant that started it, for later runs to recall.

An episode is memory, never state: it is written after the run's last checkpoint, a
failure to write it is logged and changes nothing, and no run reads an episode as
evidence that something was done (a recalled episode only ever reaches a model's prompt).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from keel.core.events import Event, RunStatus
from keel.core.state import RunState
from keel.storage.memory import NAME, MemoryItem

ENDINGS = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.NEEDS_HUMAN)


def _tried(events: Sequence[Event]) -> list[str]:
    """The actions the run attempted, in order, and what became of each."""
    tools: dict[str, str] = {}
    lines = []
    for ev in events:
        match ev.type:
            case "effect_intent":
                tools[ev.key] = ev.tool
                args = json.dumps(ev.args, sort_keys=True)[:200]
                lines.append(f"{ev.node}: {ev.tool} {args}")
            case "effect_result":
                said = "ok" if ev.ok else f"failed: {ev.error.message if ev.error else ''}"
                lines.append(
                    f"  -> {tools.get(ev.key, ev.key)} {said} {json.dumps(ev.result)[:200]}"
                )
            case "proposal_rejected":
                errs = "; ".join(f"{e['field']}: {e['reason']}" for e in ev.errors)
                lines.append(f"{ev.node}: proposal refused ({errs})")
            case "policy_decided" if ev.effect == "deny":
                lines.append(f"{ev.node}: policy denied {ev.object} {ev.action}")
            case "approval_decided" if not ev.approved:
                lines.append(f"{ev.node}: a person rejected it ({ev.reason})")
    return lines


def episode(state: RunState, events: Sequence[Event]) -> MemoryItem | None:
    """The episode of a run that has just ended (or been handed to a person); ``None``
    for one still going, or whose principal cannot name a namespace."""
    if state.status not in ENDINGS or not re.fullmatch(NAME, state.principal):
        return None
    tried = _tried(events) or ["(no action taken)"]
    signals = json.dumps(state.data, sort_keys=True, default=str)[:2_000]
    text = "\n".join(
        [
            f"goal: {state.goal}",
            f"workflow: {state.workflow}",
            "tried:",
            *tried,
            f"outcome: {state.status}" + (f" ({state.reason})" if state.reason else ""),
            f"state at the end: {signals}",
        ]
    )
    return MemoryItem(
        id=state.run_id,
        kind="episode",
        namespace=state.principal,
        title=f"{state.workflow} run {state.run_id}: {state.status}",
        text=text[:100_000],
        tags=(state.workflow, str(state.status)),
        source_run=state.run_id,
    )
