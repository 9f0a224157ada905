"""Counterfactual replay: recorded runs re-evaluated with one component swapped.

Production runs are the best test set there is. Their ledgers hold every model request
(``model_called.request``) and every policy decision, so each can be asked again of a
different piece without running anything else:

- ``tier=NAME``: every recorded model call is asked again of tier NAME, pinned;
- ``threshold=TIER:SCORE``: recorded calls are routed again with TIER's ``max_score`` set
  to SCORE; the calls that would move are asked of their new tier;
- ``policy=PATH``: every recorded policy decision is taken again under the policy CSV at
  PATH (the shipped Casbin model).

A call's answer "agrees" when it leads to the same decision (same label, or same tool and
arguments); a run "diverges" at its first disagreement, from which the run would have
gone differently.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from keel.actors.planner import parse_proposal
from keel.core.calls import RouteRequest
from keel.core.events import Event, ModelCalled, PolicyDecided
from keel.errors import InputError
from keel.policy.engine import PolicyEngine
from keel.router.classifier import for_config
from keel.router.complexity import choose

SwapKind = Literal["tier", "threshold", "policy"]
_QUERY_KEYS = ("workflow", "status", "prefix", "limit")


class Swap(BaseModel):
    kind: SwapKind
    value: str
    tier: str | None = None
    score: float | None = None


def parse_swap(text: str, tiers: list[str]) -> Swap:
    kind, sep, value = text.partition("=")
    if not sep or not value:
        raise InputError(f"--swap {text!r}: expected KIND=VALUE", field="--swap")
    if kind == "tier":
        if value not in tiers:
            raise InputError(f"--swap tier={value}: no such tier (tiers: {tiers})", field="--swap")
        return Swap(kind="tier", value=value, tier=value)
    if kind == "threshold":
        tier, _, raw = value.partition(":")
        try:
            score = float(raw)
        except ValueError:
            score = -1.0
        if tier not in tiers or not 0.0 <= score <= 1.0:
            raise InputError(
                f"--swap threshold={value}: expected TIER:SCORE with TIER one of {tiers} and "
                "SCORE in [0, 1]",
                field="--swap",
            )
        return Swap(kind="threshold", value=value, tier=tier, score=score)
    if kind == "policy":
        if not Path(value).is_file():
            raise InputError(f"--swap policy={value}: no such file", field="--swap")
        return Swap(kind="policy", value=str(Path(value).resolve()))
    raise InputError(f"--swap {text!r}: KIND is one of tier, threshold, policy", field="--swap")


def parse_query(text: str) -> dict[str, str]:
    """``all`` or ``key=value[,key=value]`` over workflow, status, prefix (run id), limit."""
    if text.strip() in ("", "all"):
        return {}
    out: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or key not in _QUERY_KEYS or not value:
            raise InputError(
                f"--from-runs {text!r}: expected 'all' or key=value with key one of "
                f"{', '.join(_QUERY_KEYS)}",
                field="--from-runs",
            )
        out[key] = value
    if "limit" in out and not out["limit"].isdigit():
        raise InputError("--from-runs limit must be a whole number", field="--from-runs")
    return out


def select_runs(keel: Any, query: dict[str, str]) -> list[str]:
    entries = keel.runs(status=query.get("status"), workflow=query.get("workflow"))
    ids = [e.run_id for e in entries if e.run_id.startswith(query.get("prefix", ""))]
    return ids[: int(query["limit"])] if "limit" in query else ids


class Change(BaseModel):
    run_id: str
    node: str
    step: int
    what: str
    recorded: str
    counterfactual: str
    agrees: bool

    @classmethod
    def at(
        cls, run_id: str, ev: PolicyDecided | ModelCalled, what: str, recorded: str, now: str
    ) -> Change:
        """What was decided at ``ev`` then, and what would be decided now."""
        return cls(
            run_id=run_id,
            node=ev.node,
            step=ev.step,
            what=what,
            recorded=recorded,
            counterfactual=now,
            agrees=recorded == now,
        )


class CounterfactualReport(BaseModel):
    query: str
    swap: Swap
    created_at: float = Field(default_factory=time.time)
    runs: list[str]
    diverging_runs: list[str]
    items: list[Change]
    metrics: dict[str, float]


def _decision(content: str, tool_calls: list[dict[str, Any]], request: dict[str, Any]) -> str:
    """What an answer decides, in a form two answers can be compared by: the tools it
    called (an agent's turn), the plan it proposed, the label it chose, or its text."""

    if tool_calls:
        made = []
        for call in tool_calls:
            fn = call.get("function") or {}
            try:
                args = json.dumps(json.loads(fn.get("arguments") or "{}"), sort_keys=True)
            except ValueError:
                args = "(invalid)"
            made.append(f"{fn.get('name')} {args}")
        return "; ".join(made)
    if request.get("kind") == "classify":
        try:
            data = json.loads(content)
        except ValueError:
            return "(invalid)"
        label = data.get("label") if isinstance(data, dict) else None
        return f"label={label}" if isinstance(label, str) else "(invalid)"
    if request.get("kind") == "plan":
        proposal, _ = parse_proposal(content)
        if proposal is None:
            return "(invalid)"
        return f"{proposal.tool} {json.dumps(proposal.args, sort_keys=True)}"
    return content.strip()[:200]


def _reask(keel: Any, calls: list[tuple[str, ModelCalled, str]]) -> list[tuple[Any, float]]:
    """Ask each (run, recorded call, tier) again, pinned to that tier."""

    handle = keel.ensure_router()
    out = []
    for _run, call, tier in calls:
        req = RouteRequest.model_validate({**(call.request or {}), "tier": tier})
        started = time.perf_counter()
        try:
            got = handle.complete.remote(req).result(timeout_s=300)
        except Exception as exc:
            got = exc
        out.append((got, time.perf_counter() - started))
    return out


def replay_runs(keel: Any, query_text: str, swap_text: str) -> CounterfactualReport:
    tiers_cfg = keel.config.router.resolved_tiers()
    swap = parse_swap(swap_text, [t.name for t in tiers_cfg])
    run_ids = select_runs(keel, parse_query(query_text))
    if not run_ids:
        raise InputError(f"--from-runs {query_text!r} matches no recorded run", field="--from-runs")
    ledgers: dict[str, list[Event]] = {r: keel.show(r).events for r in run_ids}
    items: list[Change] = []
    metrics: dict[str, float] = {"runs": float(len(run_ids))}
    if swap.kind == "policy":
        items = _policy_changes(keel, ledgers, swap.value)
        metrics["decisions"] = float(len(items))
        metrics["decisions_changed"] = float(sum(not c.agrees for c in items))
        metrics["newly_allowed"] = float(
            sum(not c.agrees and c.counterfactual == "allow" for c in items)
        )
    else:
        items, extra = _model_changes(keel, ledgers, swap, tiers_cfg)
        metrics.update(extra)
    diverging = sorted({c.run_id for c in items if not c.agrees})
    metrics["runs_diverging"] = float(len(diverging))
    return CounterfactualReport(
        query=query_text,
        swap=swap,
        runs=run_ids,
        diverging_runs=diverging,
        items=items,
        metrics=metrics,
    )


def _policy_changes(keel: Any, ledgers: dict[str, list[Event]], path: str) -> list[Change]:

    engine = PolicyEngine(keel.config.policy.model, path)
    out = []
    for run_id, events in ledgers.items():
        for ev in events:
            if isinstance(ev, PolicyDecided):
                new = engine.decide(ev.subject, ev.object, ev.action)
                what = f"{ev.subject} {ev.action} {ev.object}"
                out.append(Change.at(run_id, ev, what, ev.effect, new.effect))
    return out


def _model_changes(
    keel: Any, ledgers: dict[str, list[Event]], swap: Swap, tiers_cfg: list[Any]
) -> tuple[list[Change], dict[str, float]]:

    todo: list[tuple[str, ModelCalled, str]] = []
    unrecorded = 0
    recorded_calls = 0
    for run_id, events in ledgers.items():
        for ev in events:
            if not isinstance(ev, ModelCalled):
                continue
            recorded_calls += 1
            if ev.request is None:
                unrecorded += 1
                continue
            if swap.kind == "tier":
                todo.append((run_id, ev, str(swap.tier)))
                continue
            tiers = [
                t.model_copy(update={"max_score": swap.score}) if t.name == swap.tier else t
                for t in tiers_cfg
            ]
            req = RouteRequest.model_validate({**ev.request, "min_tier": None})
            router = keel.config.router
            new_tier = choose(req, tiers, router.weights, for_config(router)).tier
            if new_tier != ev.routed_tier:
                todo.append((run_id, ev, new_tier))
    answers = _reask(keel, todo)
    items = []
    latency_then = latency_now = 0.0
    for (run_id, ev, tier), (got, latency) in zip(todo, answers, strict=True):
        request = ev.request or {}
        before = _decision(ev.response, ev.tool_calls, request)
        if isinstance(got, Exception):
            after = f"error: {got}"
        else:
            after = _decision(got.content, got.tool_calls, request)
        what = f"{request.get('kind', 'chat')} call: {ev.tier} -> {tier}"
        items.append(Change.at(run_id, ev, what, before, after))
        latency_then += ev.latency_s
        latency_now += latency
    asked = len(items)
    metrics = {
        "model_calls": float(recorded_calls),
        "calls_without_request": float(unrecorded),
        "calls_asked_again": float(asked),
        "agreement": round(sum(c.agrees for c in items) / asked, 4) if asked else 1.0,
        "invalid_answers": float(sum(c.counterfactual == "(invalid)" for c in items)),
        "latency_recorded_s": round(latency_then, 4),
        "latency_counterfactual_s": round(latency_now, 4),
    }
    return items, metrics


def markdown(r: CounterfactualReport) -> str:
    lines = [
        f"# Counterfactual replay: {r.swap.kind}={r.swap.value}",
        "",
        f"{len(r.runs)} recorded run(s) matching `{r.query}`; "
        f"{len(r.diverging_runs)} would have gone differently.",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v:.6g} |" for k, v in r.metrics.items()],
        "",
        "| run | step | node | what | recorded | with the swap | same |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in r.items:
        lines.append(
            f"| {c.run_id} | {c.step} | {c.node} | {c.what} | {c.recorded[:80]} | "
            f"{c.counterfactual[:80]} | {'yes' if c.agrees else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def write(r: CounterfactualReport, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "counterfactual.json").write_text(r.model_dump_json(indent=2))
    (folder / "counterfactual.md").write_text(markdown(r))
    return {"json": folder / "counterfactual.json", "markdown": folder / "counterfactual.md"}
