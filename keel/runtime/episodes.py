"""Episodic memory: at a run's end, a summary of what it tried and how it ended, written to
the memory of the tenant that started it, for later runs to recall.

An episode is memory, never state: it is written after the run's last checkpoint, a
failure to write it is logged and changes nothing, and no run reads an episode as
evidence that something was done (a recalled episode only ever informs a decision the
workflow makes afresh, and reaches a model's prompt).

The text has two parts: one ``facts:`` line of JSON (``EpisodeFacts``) that a later run's
node reads back, kept first and bounded so that it survives the cap on what the ledger
records of a recalled item, and lines for people and models below it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, JsonValue, ValidationError

from keel.core.calls import RECALLED_TEXT_MAX
from keel.core.events import Event, RunStatus
from keel.core.state import RunState
from keel.storage.memory import NAME, MemoryItem

ENDINGS = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.NEEDS_HUMAN)
FACTS = "facts: "
_ARGS_MAX = 300  # characters of one attempt's arguments kept in the facts
_SIGNAL_MAX = 600  # characters of one signal's JSON kept in the facts
_SHORT_ARG = 40  # an argument kept when the facts must shrink (a setting, not a path)


class Attempt(BaseModel):
    """One action a run applied (or had refused), and whether it ran."""

    model_config = ConfigDict(frozen=True)

    node: str
    tool: str
    args: dict[str, JsonValue] = {}
    ok: bool | None = None  # None: refused before it ran (validation, policy, a person)
    why: str = ""


class EpisodeFacts(BaseModel):
    """What a later run may read back from an episode, as data."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    workflow: str
    status: str
    reason: str = ""
    tried: list[Attempt] = []
    signals: dict[str, JsonValue] = {}

    @classmethod
    def of(cls, text: str) -> EpisodeFacts | None:
        """The facts in an episode's text; ``None`` for any other memory item (or one
        whose facts line was cut or edited into something unreadable)."""
        first = text.split("\n", 1)[0]
        if not first.startswith(FACTS):
            return None
        try:
            return cls.model_validate_json(first.removeprefix(FACTS))
        except ValidationError:
            return None

    def applied(self, tools: Iterable[str]) -> list[Attempt]:
        """The attempts with one of ``tools`` that ran and reported success."""
        names = set(tools)
        return [a for a in self.tried if a.tool in names and a.ok]


def _args(args: dict[str, Any]) -> dict[str, JsonValue]:
    small = {k: v for k, v in args.items() if len(json.dumps(v, default=str)) <= _ARGS_MAX}
    return json.loads(json.dumps(small, default=str))  # type: ignore[no-any-return]


def _tried(events: Sequence[Event]) -> list[Attempt]:
    """The actions the run attempted, in order, and what became of each."""
    tried: list[Attempt] = []
    by_key: dict[str, int] = {}
    for ev in events:
        match ev.type:
            case "effect_intent":
                by_key[ev.key] = len(tried)
                tried.append(Attempt(node=ev.node, tool=ev.tool, args=_args(ev.args)))
            case "effect_result" if ev.key in by_key:
                i = by_key[ev.key]
                why = "" if ev.ok else (ev.error.message if ev.error else "failed")[:200]
                tried[i] = tried[i].model_copy(update={"ok": ev.ok, "why": why})
            case "proposal_rejected":
                errs = "; ".join(f"{e['field']}: {e['reason']}" for e in ev.errors)[:200]
                tried.append(Attempt(node=ev.node, tool="(proposal)", why=f"refused: {errs}"))
            case "policy_decided" if ev.effect == "deny":
                why = f"policy denied {ev.object} {ev.action}"
                tried.append(Attempt(node=ev.node, tool=ev.object.removeprefix("tool:"), why=why))
            case "approval_decided" if not ev.approved:
                why = f"a person rejected it: {ev.reason}"[:200]
                tried.append(Attempt(node=ev.node, tool="(approval)", why=why))
    return tried


def _shortened(a: Attempt) -> Attempt:
    args = {k: v for k, v in a.args.items() if len(json.dumps(v)) <= _SHORT_ARG}
    return a.model_copy(update={"args": args})


def _signals(state: RunState, names: Sequence[str]) -> dict[str, JsonValue]:
    out: dict[str, JsonValue] = {}
    for name in names:
        value = json.loads(json.dumps(state.data.get(name), default=str))
        if len(json.dumps(value)) <= _SIGNAL_MAX:
            out[name] = value
    return out


def _line(a: Attempt) -> str:
    said = {True: "ok", False: f"failed: {a.why}", None: a.why}[a.ok]
    return f"  {a.node}: {a.tool} {json.dumps(a.args, sort_keys=True)[:200]} -> {said}"


def episode(
    state: RunState, events: Sequence[Event], signals: Sequence[str] = ()
) -> MemoryItem | None:
    """The episode of a run that has just ended (or been handed to a person); ``None``
    for one still going, or whose principal cannot name a namespace. ``signals`` are the
    state fields the workflow names as worth remembering (what it saw before and after)."""
    if state.status not in ENDINGS or not re.fullmatch(NAME, state.principal):
        return None
    tried = _tried(events)
    facts = EpisodeFacts(
        run_id=state.run_id,
        workflow=state.workflow,
        status=str(state.status),
        reason=(state.reason or "")[:500],
        tried=tried[-12:],
        signals=_signals(state, signals),
    )
    # The facts must survive the ledger's cap on a recalled item's text: shed the attempts'
    # long arguments (paths, contents) first, then all arguments, then older attempts, and
    # the signals only as a last resort.
    short = [_shortened(a) for a in facts.tried]
    bare = [a.model_copy(update={"args": {}}) for a in facts.tried]
    for smaller in (
        {},
        {"tried": short},
        {"tried": bare},
        {"tried": bare[-4:]},
        {"tried": bare[-4:], "signals": {}},
    ):
        line = FACTS + facts.model_copy(update=smaller).model_dump_json()
        if len(line) <= RECALLED_TEXT_MAX // 2:
            break
    text = "\n".join(
        [
            line,
            f"goal: {state.goal}",
            f"workflow: {state.workflow}",
            "tried:",
            *([_line(a) for a in tried] or ["  (no action taken)"]),
            f"outcome: {state.status}" + (f" ({state.reason})" if state.reason else ""),
        ]
    )
    inputs = (f"{k}={v}" for k, v in state.inputs.items() if isinstance(v, str | int | bool))
    return MemoryItem(
        id=state.run_id,
        kind="episode",
        namespace=state.principal,
        title=f"{state.workflow} run {state.run_id}: {state.status}",
        text=text[:100_000],
        tags=(state.workflow, str(state.status), *(t[:300] for t in inputs)),
        source_run=state.run_id,
    )
