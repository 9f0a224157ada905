"""The three layers of an evaluation, each turning a suite's cases into metrics.

- model: every tier answers every prompt of the suite (pinned to that tier, through the
  router's Serve deployment, so latency includes what production pays);
- component: the complexity router, the argument validator, the retriever and the policy
  engine each answer labelled cases, in isolation;
- trajectory: whole runs in the demo environment, in parallel over the cluster, measured
  from their ledgers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from keel.actors.planner import _label, act_request, classify_request, label_schema
from keel.actors.validator import check as check_proposal
from keel.actors.worker_messages import ActRequest, ClassifyRequest, RetrieveRequest, ToolSpec
from keel.actors.workers import pool
from keel.core.calls import ChatMessage, RouteRequest
from keel.evals.environment import ScenarioRun, run_scenario, seed_memory
from keel.evals.metrics import (
    TrajectoryMetrics,
    check,
    mean,
    percentile,
    recall_at_k,
    safety_violations,
    trajectory_metrics,
)
from keel.evals.suite import Expect, Suite
from keel.examples.demo_tools import CheckHealth, ReadLogs, RestoreSnapshot, SnapshotConfig
from keel.examples.incident import MITIGATION_TOOLS
from keel.policy.engine import PolicyEngine
from keel.router.classifier import for_config
from keel.router.complexity import choose

Tick = Callable[[str], None]


class CaseResult(BaseModel):
    """One labelled case of the model or component layer."""

    model_config = ConfigDict(frozen=True)

    layer: str
    group: str
    case: str
    expected: str
    got: str
    ok: bool
    latency_s: float = 0.0
    cost: float = 0.0


class ScenarioResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    scenario: str
    tags: list[str]
    run_id: str
    status: str
    passed: bool
    misses: list[str]
    safety: list[str]
    health_before: int
    health_after: int
    duration_s: float
    metrics: TrajectoryMetrics | None = None
    error: str = ""


class LayerOutput(BaseModel):
    metrics: dict[str, float] = Field(default_factory=dict)
    cases: list[CaseResult] = Field(default_factory=list)
    scenarios: list[ScenarioResult] = Field(default_factory=list)


def tool_specs() -> dict[str, Any]:
    """The demo environment's tools, as the planner and the validator see them."""

    tools = [*MITIGATION_TOOLS, ReadLogs(), CheckHealth(), SnapshotConfig(), RestoreSnapshot()]
    return {
        t.name: ToolSpec(
            name=t.name,
            description=t.description,
            parameters=t.args_model.model_json_schema(),
            effect=t.action,
        )
        for t in tools
    }


# -- bottom: the model tiers ------------------------------------------------------------
def model_layer(keel: Any, suite: Suite, tick: Tick) -> LayerOutput:

    out = LayerOutput()
    if not suite.models:
        return out
    handle = keel.ensure_router()
    specs = tool_specs()
    mitigations = [specs["restart_service"], specs["delete_data"]]
    for tier in keel.config.router.resolved_tiers():
        for prompt in suite.models:
            if prompt.kind == "classify":
                req, _ = classify_request(ClassifyRequest(text=prompt.text, labels=prompt.labels))
            else:  # as the incident's agent asks: the tools as native functions
                turn = [ChatMessage(role="user", content=prompt.text)]
                req = act_request(ActRequest(messages=turn, tools=mitigations, max_tokens=128))
            req = req.model_copy(update={"tier": tier.name})
            started = time.perf_counter()
            calls: list[dict[str, Any]] = []
            try:
                call = handle.complete.remote(req).result(timeout_s=300)
                content, cost, failure, calls = call.content, call.cost, "", call.tool_calls
            except Exception as exc:  # a tier that cannot answer scores a miss, not a crash
                content, cost, failure = "", 0.0, f"(error: {type(exc).__name__}: {exc})"[:200]
            latency = time.perf_counter() - started
            if failure:
                got = failure
            elif prompt.kind == "classify":
                got = _label(content, label_schema(prompt.labels)) or "(invalid)"
            else:
                got = str(calls[0]["function"]["name"]) if calls else "(no tool call)"
            out.cases.append(
                CaseResult(
                    layer="model",
                    group=tier.name,
                    case=prompt.id,
                    expected=prompt.expected,
                    got=got,
                    ok=got == prompt.expected,
                    latency_s=round(latency, 4),
                    cost=cost,
                )
            )
            tick(f"model {tier.name}: {prompt.id}")
        mine = [c for c in out.cases if c.group == tier.name]
        out.metrics[f"model.{tier.name}.accuracy"] = round(mean([c.ok for c in mine]), 4)
        lat = [c.latency_s for c in mine]
        out.metrics[f"model.{tier.name}.latency_p50_s"] = round(percentile(lat, 50), 4)
        out.metrics[f"model.{tier.name}.latency_p95_s"] = round(percentile(lat, 95), 4)
        out.metrics[f"model.{tier.name}.cost"] = round(sum(c.cost for c in mine), 8)
    return out


# -- middle: the components -------------------------------------------------------------
def component_layer(keel: Any, suite: Suite, tick: Tick) -> LayerOutput:

    out = LayerOutput()
    comp = suite.components
    router = keel.config.router
    tiers = router.resolved_tiers()
    for case in comp.routing:
        req = RouteRequest(
            messages=[ChatMessage(role="user", content="x" * case.prompt_chars)],
            kind=case.kind,
            tools=case.tools,
            failures=case.failures,
        )
        tier = choose(req, tiers, router.weights, for_config(router)).tier
        out.cases.append(_case("routing", case.id, case.expected, tier))
        tick(f"routing {case.id}")
    specs = tool_specs()
    for acase in comp.args:
        if acase.tool not in specs:
            got = "unknown tool"
        else:
            proposal, errors = check_proposal(
                {"tool": acase.tool, "args": acase.args}, [specs[acase.tool]]
            )
            got = "valid" if proposal is not None else f"invalid ({errors[0].field})"
        want = "valid" if acase.valid else "invalid"
        out.cases.append(_case("args", acase.id, want, got, ok=got.split(" ")[0] == want))
        tick(f"args {acase.id}")
    recalls: list[float] = []
    if comp.retrieval:
        seed_memory(keel)
        retriever = pool("retriever", keel.settings().node_env())
        for rcase in comp.retrieval:
            resp = retriever.call_sync(
                "retrieve", RetrieveRequest(query=rcase.query, k=comp.retrieval_k)
            )
            ranked = [i.id for i in resp.items]
            score = recall_at_k(ranked, rcase.relevant, comp.retrieval_k)
            case_ = _case("retrieval", rcase.id, ",".join(rcase.relevant), ",".join(ranked))
            out.cases.append(case_.model_copy(update={"ok": score == 1.0}))
            recalls.append(score)
            tick(f"retrieval {rcase.id}")
    if comp.policy:
        cfg = keel.config.policy
        engine = PolicyEngine(cfg.model, cfg.policy)
        for pcase in comp.policy:
            got = engine.decide(pcase.subject, pcase.object, pcase.action).effect
            out.cases.append(_case("policy", pcase.id, pcase.expected, got))
            tick(f"policy {pcase.id}")
    for group in ("routing", "args", "policy"):
        mine = [c.ok for c in out.cases if c.group == group]
        if mine:
            out.metrics[f"component.{group}_accuracy"] = round(mean(mine), 4)
    if recalls:
        out.metrics[f"component.retrieval_recall_at_{comp.retrieval_k}"] = round(mean(recalls), 4)
    return out


def _case(group: str, case: str, expected: str, got: str, ok: bool | None = None) -> CaseResult:
    return CaseResult(
        layer="component",
        group=group,
        case=case,
        expected=expected,
        got=got,
        ok=(got == expected) if ok is None else ok,
    )


# -- top: whole trajectories ------------------------------------------------------------
def trajectory_layer(
    keel: Any, suite: Suite, tick: Tick, *, base: Path, prefix: str
) -> LayerOutput:
    out = LayerOutput()
    if not suite.scenarios:
        return out
    seed_memory(keel)
    runs: dict[str, list[ScenarioRun]] = {}
    with ThreadPoolExecutor(max_workers=suite.concurrency) as pool:
        futures = {
            pool.submit(run_scenario, keel, suite, sc, base, prefix): sc for sc in suite.scenarios
        }
        for fut in as_completed(futures):
            sc = futures[fut]
            runs[sc.id] = fut.result()
            tick(f"scenario {sc.id}: {', '.join(r.status for r in runs[sc.id])}")
    for sc in suite.scenarios:
        first, *again = runs[sc.id]
        out.scenarios.append(score_scenario(keel, sc, first, sc.expect))
        for run in again:  # the second run, with the first one's episode in memory
            out.scenarios.append(score_scenario(keel, sc, run, sc.again or Expect()))
    out.metrics.update(trajectory_summary(out.scenarios))
    return out


def score_scenario(keel: Any, sc: Any, run: ScenarioRun, expect: Expect) -> ScenarioResult:
    if run.error:
        return ScenarioResult(
            scenario=run.scenario,
            tags=sc.tags,
            run_id=run.run_id,
            status=run.status,
            passed=False,
            misses=[run.error],
            safety=[],
            health_before=run.health_before,
            health_after=run.health_after,
            duration_s=run.duration_s,
            error=run.error,
        )
    m = trajectory_metrics(keel.show(run.run_id).events)
    if run.approval_errors:  # a refused answer writes nothing to the ledger; the harness saw it
        m = m.model_copy(update={"approval_refused": True})
    misses = check(m, expect, run.health_after == 200)
    return ScenarioResult(
        scenario=run.scenario,
        tags=sc.tags,
        run_id=run.run_id,
        status=m.status,
        passed=not misses,
        misses=misses,
        safety=safety_violations(m, expect.never_tools),
        health_before=run.health_before,
        health_after=run.health_after,
        duration_s=run.duration_s,
        metrics=m,
    )


def trajectory_summary(results: list[ScenarioResult]) -> dict[str, float]:
    """The top layer's metrics over a suite's scenarios."""
    measured = [r.metrics for r in results if r.metrics is not None]
    proposals = sum(m.proposals for m in measured)
    invalid = sum(m.invalid_proposals for m in measured)
    return {
        "trajectory.goal_completion": round(mean([r.passed for r in results]), 4),
        "trajectory.safety_violations": float(sum(len(r.safety) for r in results)),
        "trajectory.steps_mean": round(mean([m.steps for m in measured]), 3),
        "trajectory.tool_calls_mean": round(mean([m.tool_calls for m in measured]), 3),
        "trajectory.cost_total": round(sum(m.cost for m in measured), 8),
        "trajectory.rollbacks": float(sum(m.rollbacks for m in measured)),
        "trajectory.escalations": float(sum(m.escalations for m in measured)),
        "trajectory.approvals_asked": float(sum(m.approvals_asked for m in measured)),
        "trajectory.duration_p50_s": round(percentile([r.duration_s for r in results], 50), 3),
        "component.proposal_validity": round(1 - invalid / proposals, 4) if proposals else 1.0,
    }
