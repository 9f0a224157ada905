"""The bundled ``incident`` workflow: diagnose, plan from runbooks, act in the sandbox,
check health, and roll back and hand over if the action did not help.

diagnose (read logs, health; role ``diagnose``) -> nothing to do if healthy, else
classify (small model) -> recall
runbooks (retriever) -> plan (large tier) -> snapshot config -> mitigate (validated, policy;
restarting needs approval; role ``mitigate``) -> health after -> resolved, or
rollback to the snapshot -> hand back to a person.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from keel.actors.worker_messages import ClassifyRequest, PlanRequest, RetrieveRequest, ToolSpec
from keel.actors.workers import workers
from keel.core.nodes import ConfinedPath, NodeContext, NodeOutput, RetryPolicy
from keel.core.state import append
from keel.core.tool import Tool
from keel.core.workflow import END, Workflow
from keel.examples.demo_tools import (
    CheckHealth,
    DeleteDataFile,
    ReadLogs,
    RestartService,
    RestoreSnapshot,
    SnapshotConfig,
)
from keel.storage.memory import MemoryItem

LABELS = ["bad_config", "overload", "data_corruption"]

RUNBOOKS = [
    MemoryItem(
        id="rb-bad-config",
        kind="document",
        title="Bad config change",
        text="Symptoms: invalid config value in service.json, requests fail with HTTP 500 "
        "right after a config change. Fix: restart the service restoring the last good "
        'config (service.json.good).\nhints: {"config_action": "restore_last_good"}',
    ),
    MemoryItem(
        id="rb-overload",
        kind="document",
        title="Connection overload",
        text="Symptoms: requests time out, too many open connections, health failing. "
        "Fix: restart the service with max_connections lowered to 50.\n"
        'hints: {"config_action": "set_max_connections", "max_connections": 50}',
    ),
    MemoryItem(
        id="rb-data",
        kind="document",
        title="Corrupt data file",
        text="Symptoms: data file checksum mismatch. Restarting does not repair data: a person "
        "must restore orders.db from backup.",
    ),
]


class IncidentInputs(BaseModel):
    """The service the run acts on, fixed when the run starts: every tool's target is bound
    to these, never taken from a proposal."""

    root: ConfinedPath = Field(min_length=1)
    port: int = Field(ge=1024, le=65535)
    service: Literal["checkout"] = "checkout"


class IncidentState(BaseModel):
    logs: dict[str, Any] = {}
    health_before: dict[str, Any] = {}
    label: str = ""
    runbooks: list[str] = []
    hints: dict[str, Any] = {}
    proposal: dict[str, Any] | None = None
    errors: list[dict[str, str]] = []
    tried: Annotated[list[str], append] = []
    snapshot: dict[str, Any] = {}
    mitigation: dict[str, Any] = {}
    health_after: dict[str, Any] = {}
    rollback: dict[str, Any] = {}


workflow = Workflow(
    "incident",
    state=IncidentState,
    inputs=IncidentInputs,
    uses_models=True,
    description="Diagnose and mitigate a failing service, rolling back if it does not help.",
)


TARGET = {"root": "root", "port": "port", "service": "service"}


def _target(ctx: NodeContext) -> dict[str, Any]:
    return {name: ctx.inputs[name] for name in TARGET if name in ctx.inputs}


def _problems(state: IncidentState) -> list[str]:
    return [str(p) for p in state.health_before.get("problems") or []]


@workflow.effect(ReadLogs(), role="diagnose", result_field="logs", bind=TARGET)
def read_logs(state: IncidentState, ctx: NodeContext) -> dict[str, Any]:
    return {**_target(ctx), "lines": 30}


workflow.edge("read_logs", "health_before")


@workflow.effect(
    CheckHealth(), "health_before", role="diagnose", result_field="health_before", bind=TARGET
)
def health_before(state: IncidentState, ctx: NodeContext) -> dict[str, Any]:
    return _target(ctx)


workflow.route(
    "health_before",
    lambda s: "healthy" if s.health_before.get("code") == 200 else "classify",
    ["healthy", "classify"],
)


@workflow.node(inline=True)
def healthy(state: IncidentState, ctx: NodeContext) -> Any:
    return {}  # nothing to mitigate: a healthy service is left alone


workflow.edge("healthy", END)


@workflow.node(retry=RetryPolicy(attempts=2, backoff_s=0.5), timeout_s=120)
def classify(state: IncidentState, ctx: NodeContext) -> Any:

    errors = [line for line in state.logs.get("lines") or [] if "ERROR" in str(line)][-5:]
    text = f"{ctx.goal}\n" + "\n".join(str(e) for e in errors)
    resp = workers(ctx).planner.classify(ClassifyRequest(text=text[:4000], labels=LABELS))
    return NodeOutput(updates={"label": resp.label}, calls=resp.calls, worker=resp.worker)


workflow.edge("classify", "recall")


@workflow.node(timeout_s=120)
def recall(state: IncidentState, ctx: NodeContext) -> Any:

    query = " ".join([ctx.goal, state.label.replace("_", " "), *_problems(state)])
    resp = workers(ctx).retriever.retrieve(
        RetrieveRequest(query=query[:4000], k=3, kind="document")
    )
    hints: dict[str, Any] = {}
    for item in resp.items:  # the best-ranked runbook that says how to act
        for line in item.text.splitlines():
            if line.startswith("hints:"):
                hints = json.loads(line.removeprefix("hints:"))
                break
        if hints:
            break
    return NodeOutput(
        updates={"runbooks": [i.id for i in resp.items], "hints": hints}, worker=resp.worker
    )


workflow.edge("recall", "plan")


MITIGATION_TOOLS = (RestartService(), DeleteDataFile())
MITIGATIONS: list[Tool] = list(MITIGATION_TOOLS)
_OPERATOR_HINT = re.compile(r"\b([a-z_][a-z0-9_]*)=(\S+)")


def operator_hints(goal: str, fields: set[str]) -> dict[str, Any]:
    """``key=value`` settings the operator wrote in the goal, for the tool's own fields
    (never the target's: a goal cannot point the action at another service)."""
    hints: dict[str, Any] = {}
    for key, raw in _OPERATOR_HINT.findall(goal):
        if key in fields:
            value = raw.rstrip(".,;")
            try:
                hints[key] = json.loads(value)
            except ValueError:
                hints[key] = value
    return hints


@workflow.node(retry=RetryPolicy(attempts=2, backoff_s=0.5), timeout_s=120)
def plan(state: IncidentState, ctx: NodeContext) -> Any:

    specs = [
        ToolSpec(
            name=t.name,
            description=t.description,
            parameters=t.args_model.model_json_schema(),
            effect="write",
        )
        for t in MITIGATION_TOOLS
    ]
    fields = {f for t in MITIGATION_TOOLS for f in t.args_model.model_fields} - set(_target(ctx))
    # A setting that was rejected is not offered again, and a tool policy refused is not
    # proposed again.
    rejected = {e.get("field", "").removeprefix("args.") for e in state.errors}
    last_tool = str((state.proposal or {}).get("tool") or "")
    refused = last_tool and "tool" in rejected and last_tool not in state.tried
    denied = [last_tool] if refused else []
    asked = operator_hints(ctx.goal, fields)
    hints = {**state.hints, **{k: v for k, v in asked.items() if k not in rejected}}
    observations = [f"classified as {state.label}", *_problems(state), *state.runbooks]
    observations += [f"rejected: {e['field']}: {e['reason']}" for e in state.errors]
    resp = workers(ctx).planner.plan(
        PlanRequest(
            goal=ctx.goal,
            observations=observations,
            tools=specs,
            hints={**hints, **_target(ctx)},
            failures=len(state.errors),
            tried=[*state.tried, *denied],
        ),
    )
    proposal = resp.proposal.model_dump() if resp.proposal else {}
    updates: dict[str, Any] = {"proposal": proposal, "tried": denied}
    return NodeOutput(updates=updates, calls=resp.calls, worker=resp.worker)


workflow.edge("plan", "snapshot")


@workflow.effect(
    SnapshotConfig(), "snapshot", role="mitigate", result_field="snapshot", bind=TARGET
)
def snapshot(state: IncidentState, ctx: NodeContext) -> dict[str, Any]:
    return _target(ctx)


workflow.edge("snapshot", "mitigate")


@workflow.effect(
    MITIGATIONS,
    "mitigate",
    role="mitigate",
    result_field="mitigation",
    on_reject="plan",
    rejections_field="errors",
    timeout_s=60,
    bind=TARGET,
)
def mitigate(state: IncidentState, ctx: NodeContext) -> dict[str, Any]:
    return dict(state.proposal or {})


workflow.edge("mitigate", "health_after")


@workflow.effect(
    CheckHealth(), "health_after", role="diagnose", result_field="health_after", bind=TARGET
)
def health_after(state: IncidentState, ctx: NodeContext) -> dict[str, Any]:
    return _target(ctx)


def _improved(state: IncidentState) -> str:
    return "resolved" if state.health_after.get("code") == 200 else "rollback"


workflow.route("health_after", _improved, ["resolved", "rollback"])


@workflow.node(inline=True)
def resolved(state: IncidentState, ctx: NodeContext) -> dict[str, Any]:
    return {}


workflow.edge("resolved", END)


@workflow.effect(
    RestoreSnapshot(), "rollback", role="mitigate", result_field="rollback", bind=TARGET
)
def rollback(state: IncidentState, ctx: NodeContext) -> dict[str, Any]:
    snap = state.snapshot
    return {**_target(ctx), "content": snap.get("content", ""), "sha256": snap.get("sha256", "")}


workflow.edge("rollback", "hand_back")


@workflow.node(inline=True)
def hand_back(state: IncidentState, ctx: NodeContext) -> Any:
    before, after = state.health_before, state.health_after
    action = (state.proposal or {}).get("args", {})
    reason = (
        f"mitigation restart_service {json.dumps(action.get('config_action'))} did not improve "
        f"health ({before.get('code')} -> {after.get('code')}: "
        f"{'; '.join(str(p) for p in after.get('problems') or [])[:200]}); "
        "config rolled back to the snapshot; over to a person"
    )
    return NodeOutput(handoff=reason)


workflow.edge("hand_back", END)
