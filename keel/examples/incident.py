"""The bundled ``incident`` workflow: diagnose, recall runbooks, let an agent act in the
sandbox, check health, and roll back and hand over if the action did not help.

diagnose (read logs, health; role ``diagnose``) -> nothing to do if healthy, else
classify (small model) -> recall runbooks, and the episodes of earlier runs on this service
(retriever) -> if an earlier run on the same symptoms applied a mitigation that did not
help, hand back to a person at once rather than repeat it -> snapshot config -> mitigate: an
agent loop (large tier, native tool calls) whose every call is validated, checked by policy
as role ``mitigate`` (restarting needs approval) and applied exactly once, a refused call
going back to the model with the reason -> health after -> resolved, or rollback to the
snapshot -> hand back to a person.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, Field

from keel.actors.agent import AgentState, agent
from keel.actors.worker_messages import ClassifyRequest, RetrieveRequest
from keel.actors.workers import workers
from keel.core.nodes import ConfinedPath, NodeContext, NodeOutput, RetryPolicy
from keel.core.workflow import END, Workflow
from keel.examples.demo_tools import (
    CheckHealth,
    DeleteDataFile,
    ReadLogs,
    RestartService,
    RestoreSnapshot,
    SnapshotConfig,
)
from keel.runtime.episodes import EpisodeFacts
from keel.storage.memory import NAME, MemoryItem

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


class IncidentState(AgentState):
    logs: dict[str, Any] = {}
    health_before: dict[str, Any] = {}
    label: str = ""
    runbooks: list[str] = []
    hints: dict[str, Any] = {}
    earlier: list[str] = []  # what earlier runs on this service tried, for the agent
    known_failure: str = ""  # an earlier run's mitigation that did not help, on these symptoms
    snapshot: dict[str, Any] = {}
    health_after: dict[str, Any] = {}
    rollback: dict[str, Any] = {}


workflow = Workflow(
    "incident",
    state=IncidentState,
    inputs=IncidentInputs,
    uses_models=True,
    signals=("label", "health_before", "health_after"),
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


# classify and recall only await workers: async nodes, on the orchestrator's event loop.
@workflow.node(retry=RetryPolicy(attempts=2, backoff_s=0.5), timeout_s=120)
async def classify(state: IncidentState, ctx: NodeContext) -> Any:

    errors = [line for line in state.logs.get("lines") or [] if "ERROR" in str(line)][-5:]
    text = f"{ctx.goal}\n" + "\n".join(str(e) for e in errors)
    req = ClassifyRequest(text=text[:4000], labels=LABELS)
    resp = await workers(ctx).planner.aclassify(req)
    return NodeOutput(updates={"label": resp.label}, calls=resp.calls, worker=resp.worker)


workflow.edge("classify", "recall")


def _hints(items: list[Any]) -> dict[str, Any]:
    """The hints of the best-ranked runbook that says how to act."""
    for item in items:
        for line in item.text.splitlines():
            if line.startswith("hints:"):
                hints: dict[str, Any] = json.loads(line.removeprefix("hints:"))
                return hints
    return {}


def _health(signal: Any) -> Any:
    return signal.get("code") if isinstance(signal, dict) else None


def learn(state: IncidentState, episodes: list[EpisodeFacts]) -> tuple[list[str], str]:
    """What earlier runs on this service tell this one: a line per run for the agent, and
    the reason not to mitigate at all when one of them, on the same symptoms (the problems
    the service's own health check reported, not the model's reading of them), applied a
    mitigation and health did not recover (its effect was rolled back; repeating it would
    only repeat the outage). Episodes inform this decision; none counts as work done."""
    names = [t.name for t in MITIGATION_TOOLS]
    lines: list[str] = []
    failure = ""
    for ep in episodes:
        if ep.workflow != workflow.name:
            continue
        ran = ep.applied(names)
        after = _health(ep.signals.get("health_after"))
        did = "; ".join(f"{a.tool} {json.dumps(a.args.get('config_action'))}" for a in ran)
        lines.append(
            f"earlier run {ep.run_id} ({ep.status}, classified as {ep.signals.get('label')}): "
            f"{did or 'no mitigation ran'}; health after {after}"
        )
        seen = ep.signals.get("health_before")
        seen_problems = seen.get("problems") if isinstance(seen, dict) else None
        same = seen_problems == _problems(state)
        if not failure and same and ran and after is not None and after != 200:
            failure = (
                f"an earlier run on this service, {ep.run_id}, saw the same problems and "
                f"applied {did}; health stayed {after} and it was rolled back, so it is not "
                "repeated; over to a person"
            )
    return lines, failure


@workflow.node(timeout_s=120)
async def recall(state: IncidentState, ctx: NodeContext) -> Any:

    query = " ".join([ctx.goal, state.label.replace("_", " "), *_problems(state)])[:4000]
    retriever = workers(ctx).retriever
    req = RetrieveRequest(query=query, k=3, kind="document")
    resp = await retriever.aretrieve(req)
    recalls = [resp.record(req)]
    episodes: list[EpisodeFacts] = []
    if re.fullmatch(NAME, ctx.principal):  # the run's own memory: this service's history
        ep_req = RetrieveRequest(
            query=query,
            k=5,
            kind="episode",
            namespace=ctx.principal,
            tags=[workflow.name, f"root={ctx.inputs['root']}"],
        )
        ep_resp = await retriever.aretrieve(ep_req)
        recalls.append(ep_resp.record(ep_req))
        episodes = [f for i in ep_resp.items if (f := EpisodeFacts.of(i.text)) is not None]
    earlier, failure = learn(state, episodes)
    return NodeOutput(
        updates={
            "runbooks": [i.id for i in resp.items],
            "hints": _hints(resp.items),
            "earlier": earlier,
            "known_failure": failure,
        },
        recalls=recalls,
        worker=resp.worker,
    )


workflow.route(
    "recall", lambda s: "repeat_avoided" if s.known_failure else "snapshot",
    ["repeat_avoided", "snapshot"],
)  # fmt: skip


@workflow.node(inline=True)
def repeat_avoided(state: IncidentState, ctx: NodeContext) -> Any:
    return NodeOutput(handoff=state.known_failure)


workflow.edge("repeat_avoided", END)


@workflow.effect(
    SnapshotConfig(), "snapshot", role="mitigate", result_field="snapshot", bind=TARGET
)
def snapshot(state: IncidentState, ctx: NodeContext) -> dict[str, Any]:
    return _target(ctx)


workflow.edge("snapshot", "mitigate")


MITIGATION_TOOLS = (RestartService(), DeleteDataFile())
INSTRUCTIONS = (
    "You mitigate an incident on one service. Call one tool to fix it, with the runbook's "
    "hints and any settings the operator wrote in the goal. If a call is refused, read why "
    "and call again differently. Once a call has run, answer in one line."
)


def brief(state: IncidentState, ctx: NodeContext) -> str:
    """What the agent is told: the goal, what diagnosis found, and the runbook's hints (the
    service's address is not among them: the engine binds it to the run's inputs)."""
    observations = [
        f"classified as {state.label}",
        *_problems(state),
        *state.runbooks,
        *state.earlier,
    ]
    return json.dumps({"goal": ctx.goal, "observations": observations, "hints": state.hints})


agent(
    workflow,
    "mitigate",
    list(MITIGATION_TOOLS),
    role="mitigate",
    instructions=INSTRUCTIONS,
    brief=brief,
    max_turns=4,
    then="health_after",
    bind=TARGET,
)


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


def applied(state: IncidentState) -> list[tuple[str, dict[str, Any]]]:
    """The agent's calls that ran (not those refused), as (tool, arguments), in order."""
    calls = {
        c.get("id"): c.get("function") or {}
        for m in state.messages
        for c in m.get("tool_calls") or []
    }
    ran = []
    for m in state.messages:
        if m.get("role") == "tool" and not str(m.get("content")).startswith("refused: "):
            fn = calls.get(m.get("tool_call_id"), {})
            try:
                args = json.loads(fn.get("arguments") or "{}")
            except ValueError:
                args = {}
            ran.append((str(fn.get("name")), args if isinstance(args, dict) else {}))
    return ran


@workflow.node(inline=True)
def hand_back(state: IncidentState, ctx: NodeContext) -> Any:
    before, after = state.health_before, state.health_after
    tool, action = (applied(state) or [("no tool", {})])[-1]
    reason = (
        f"mitigation {tool} {json.dumps(action.get('config_action'))} did not improve "
        f"health ({before.get('code')} -> {after.get('code')}: "
        f"{'; '.join(str(p) for p in after.get('problems') or [])[:200]}); "
        "config rolled back to the snapshot; over to a person"
    )
    return NodeOutput(handoff=reason)


workflow.edge("hand_back", END)
