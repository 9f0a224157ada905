"""Workflows the runtime tests drive. Importable by Ray workers (the driver's sys.path
travels with the job), so the orchestrator can load them by ``module:attr``."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import ray
from pydantic import BaseModel, Field, JsonValue

from keel.actors.agent import AgentState, agent
from keel.actors.worker_messages import (
    ClassifyRequest,
    PlanRequest,
    PlanResponse,
    RetrieveRequest,
    ToolSpec,
    ValidateRequest,
)
from keel.actors.workers import workers
from keel.core.nodes import NodeContext, NodeOutput, RetryPolicy
from keel.core.state import add, append
from keel.core.tool import Tool, Verification
from keel.core.workflow import END, Workflow
from keel.sandbox.mcp import MCPTools


class CounterArgs(BaseModel):
    """Where the counter file lives."""

    path: str


class CounterTool(Tool):
    """A deliberately naive external system: every ``apply`` adds one, keys or not.

    So the counter reads exactly the number of times the effect really ran; a duplicate
    effect shows up as 2. ``verify`` answers from the keys the system has seen.
    """

    action = "write"
    args_model: type[BaseModel] | None = CounterArgs

    def __init__(self, name: str) -> None:
        self.name = name

    def apply(self, args: dict[str, Any], key: str) -> JsonValue:
        path = Path(str(args["path"]))
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = json.loads(path.read_text()) if path.exists() else {"count": 0, "keys": []}
            data["count"] += 1
            data["keys"].append(key)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, path)
        return {"count": data["count"]}

    def verify(self, args: dict[str, Any], key: str) -> Verification:
        path = Path(str(args["path"]))
        data = json.loads(path.read_text()) if path.exists() else {"keys": []}
        if key in data["keys"]:
            return Verification(status="applied", result={"count": data["keys"].index(key) + 1})
        return Verification(status="not_applied")


def counter(path: str | Path) -> int:
    p = Path(path)
    return int(json.loads(p.read_text())["count"]) if p.exists() else 0


def touch_count(directory: str, name: str) -> None:
    """Record that a node body ran (used to prove a resume does not start from zero)."""
    marker = Path(directory) / f"ran-{name}"
    with open(marker, "a") as fh:
        fh.write("x")


def runs_of(directory: str | Path, name: str) -> int:
    marker = Path(directory) / f"ran-{name}"
    return len(marker.read_text()) if marker.exists() else 0


class FiveState(BaseModel):
    trail: Annotated[list[str], append] = []
    total: Annotated[int, add] = 0
    charged: JsonValue = None
    shipped: JsonValue = None


class FiveInputs(BaseModel):
    dir: str
    slow_s: float = 0.0
    gate: str | None = None


five = Workflow("five", state=FiveState, inputs=FiveInputs)


@five.node()
def a(state: FiveState, ctx: NodeContext) -> dict[str, Any]:
    touch_count(str(ctx.inputs["dir"]), "a")
    return {"trail": "a", "total": 1}


five.edge("a", "charge")


@five.effect(CounterTool("charge"), role="mitigate", result_field="charged")
def charge(state: FiveState, ctx: NodeContext) -> dict[str, Any]:
    return {"path": f"{ctx.inputs['dir']}/charge.json"}


five.edge("charge", "c")


@five.node()
def c(state: FiveState, ctx: NodeContext) -> dict[str, Any]:
    touch_count(str(ctx.inputs["dir"]), "c")
    gate = ctx.inputs.get("gate")
    while gate and not Path(str(gate)).exists():
        time.sleep(0.05)
    time.sleep(float(ctx.inputs.get("slow_s") or 0))  # type: ignore[arg-type]
    return {"trail": "c", "total": 1}


five.edge("c", "ship")


@five.effect(CounterTool("ship"), role="mitigate", result_field="shipped")
def ship(state: FiveState, ctx: NodeContext) -> dict[str, Any]:
    return {"path": f"{ctx.inputs['dir']}/ship.json"}


five.edge("ship", "e")


@five.node()
def e(state: FiveState, ctx: NodeContext) -> dict[str, Any]:
    touch_count(str(ctx.inputs["dir"]), "e")
    return {"trail": "e", "total": 1}


five.edge("e", END)


class FlakyState(BaseModel):
    tries: Annotated[int, add] = 0
    loops: Annotated[int, add] = 0


flaky = Workflow("flaky", state=FlakyState)


@flaky.node(retry=RetryPolicy(attempts=3, backoff_s=0.01))
def wobble(state: FlakyState, ctx: NodeContext) -> dict[str, Any]:
    if ctx.attempt < int(ctx.inputs.get("fail_times", 2)):  # type: ignore[arg-type]
        raise ConnectionError(f"transient failure on attempt {ctx.attempt}")
    return {"tries": ctx.attempt}


flaky.edge("wobble", "loop")


@flaky.node(inline=True)
def loop(state: FlakyState, ctx: NodeContext) -> dict[str, Any]:
    return {"loops": 1}


flaky.route("loop", lambda s: "loop" if s.loops < 3 else END, ["loop", END])


slow = Workflow("slow")


@slow.node(timeout_s=0.5, retry=RetryPolicy(attempts=2))
def sleepy(state: BaseModel, ctx: NodeContext) -> dict[str, Any]:
    time.sleep(30)
    return {}


slow.edge("sleepy", END)


class WhereState(BaseModel):
    threads: Annotated[list[int], append] = []


where = Workflow("where", state=WhereState)


@where.node()
async def awaits(state: WhereState, ctx: NodeContext) -> dict[str, Any]:
    await asyncio.sleep(0.01)
    return {"threads": threading.get_ident()}


where.edge("awaits", "on_thread")


@where.node(inline=True)
def on_thread(state: WhereState, ctx: NodeContext) -> dict[str, Any]:
    return {"threads": threading.get_ident()}


where.edge("on_thread", END)


slow_async = Workflow("slow_async")


@slow_async.node(timeout_s=0.2, retry=RetryPolicy(attempts=2, backoff_s=0.01))
async def waits(state: BaseModel, ctx: NodeContext) -> dict[str, Any]:
    await asyncio.sleep(30)
    return {}


slow_async.edge("waits", END)


bad = Workflow("bad", state=FlakyState)


@bad.node()
def wrong_field(state: FlakyState, ctx: NodeContext) -> dict[str, Any]:
    return {"no_such_field": 1}


bad.edge("wrong_field", END)


# -- a workflow that uses every worker -------------------------------------------------
TOOLS = [
    {
        "name": "read_logs",
        "description": "read the recent logs of a service",
        "parameters": {
            "type": "object",
            "properties": {
                "service": {"type": "string", "maxLength": 64},
                "lines": {"type": "integer", "minimum": 1, "maximum": 10000},
            },
            "required": ["service"],
            "additionalProperties": False,
        },
    },
    {
        "name": "restore_config",
        "description": "restore the last good config of a service after a bad config change",
        "effect": "write",
        "parameters": {
            "type": "object",
            "properties": {"service": {"type": "string", "minLength": 1, "maxLength": 64}},
            "required": ["service"],
            "additionalProperties": False,
        },
    },
]
LABELS = ["bad_config", "disk_full", "crash_loop"]


class TriageState(BaseModel):
    label: str = ""
    runbooks: list[str] = []
    proposal: dict[str, Any] | None = None
    valid: bool = False


triage = Workflow("triage", state=TriageState, uses_models=True)


def _classify_request(ctx: NodeContext) -> ClassifyRequest:
    return ClassifyRequest(text=ctx.goal, labels=LABELS)


def _recall_request(state: TriageState, ctx: NodeContext) -> RetrieveRequest:
    return RetrieveRequest(query=f"{ctx.goal} {state.label}", k=2, kind="document")


def _plan_request(state: TriageState, ctx: NodeContext) -> PlanRequest:
    return PlanRequest(
        goal=ctx.goal,
        observations=[f"classified as {state.label}", *state.runbooks],
        tools=[ToolSpec.model_validate(t) for t in TOOLS],
        hints={"service": "checkout"},
        tried=["read_logs"],
    )


def _planned(resp: PlanResponse) -> NodeOutput:
    proposal = resp.proposal.model_dump() if resp.proposal else None
    return NodeOutput(updates={"proposal": proposal}, calls=resp.calls, worker=resp.worker)


def _check_request(state: TriageState) -> ValidateRequest:
    tools = [ToolSpec.model_validate(t) for t in TOOLS]
    return ValidateRequest(proposal=state.proposal or {}, tools=tools)


@triage.node(retry=RetryPolicy(attempts=2))
def classify(state: TriageState, ctx: NodeContext) -> Any:

    resp = workers(ctx).planner.classify(_classify_request(ctx))
    return NodeOutput(updates={"label": resp.label}, calls=resp.calls, worker=resp.worker)


triage.edge("classify", "recall")


@triage.node()
def recall(state: TriageState, ctx: NodeContext) -> Any:

    resp = workers(ctx).retriever.retrieve(_recall_request(state, ctx))
    return NodeOutput(updates={"runbooks": [i.id for i in resp.items]}, worker=resp.worker)


triage.edge("recall", "plan")


@triage.node(retry=RetryPolicy(attempts=2))
def plan(state: TriageState, ctx: NodeContext) -> Any:

    gate = ctx.inputs.get("gate")
    while gate and not Path(str(gate)).exists():
        time.sleep(0.05)
    return _planned(workers(ctx).planner.plan(_plan_request(state, ctx)))


triage.edge("plan", "check")


@triage.node()
def check(state: TriageState, ctx: NodeContext) -> Any:

    resp = workers(ctx).validator.validate(_check_request(state))
    return NodeOutput(updates={"valid": resp.ok}, worker=resp.worker)


triage.edge("check", END)


# The same four steps as ``async def`` nodes: they run on the orchestrator's event loop and
# await the same workers, so no step needs a Ray task.
atriage = Workflow("atriage", state=TriageState, uses_models=True)


@atriage.node("classify", retry=RetryPolicy(attempts=2))
async def classify_async(state: TriageState, ctx: NodeContext) -> Any:
    resp = await workers(ctx).planner.aclassify(_classify_request(ctx))
    if ctx.inputs.get("where"):  # the actor it ran in: the orchestrator's, not a task's
        here = ray.get_runtime_context().get_actor_name() or ""
        await asyncio.to_thread(Path(str(ctx.inputs["where"])).write_text, here)
    return NodeOutput(updates={"label": resp.label}, calls=resp.calls, worker=resp.worker)


@atriage.node("recall")
async def recall_async(state: TriageState, ctx: NodeContext) -> Any:
    resp = await workers(ctx).retriever.aretrieve(_recall_request(state, ctx))
    return NodeOutput(updates={"runbooks": [i.id for i in resp.items]}, worker=resp.worker)


@atriage.node("plan", retry=RetryPolicy(attempts=2))
async def plan_async(state: TriageState, ctx: NodeContext) -> Any:
    return _planned(await workers(ctx).planner.aplan(_plan_request(state, ctx)))


@atriage.node("check")
async def check_async(state: TriageState, ctx: NodeContext) -> Any:
    resp = await workers(ctx).validator.avalidate(_check_request(state))
    return NodeOutput(updates={"valid": resp.ok}, worker=resp.worker)


for _a, _b in (("classify", "recall"), ("recall", "plan"), ("plan", "check"), ("check", END)):
    atriage.edge(_a, _b)


class TriageInputs(BaseModel):
    gate: str | None = None
    where: str | None = None


triage.inputs_model = TriageInputs
atriage.inputs_model = TriageInputs


# -- policy and validation ---------------------------------------------------------------
class TargetArgs(BaseModel):
    """Arguments of the guarded tools: where the counter lives, which service."""

    model_config = {"extra": "forbid"}

    path: str
    service: str = Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9-]*$")


class RestartService(CounterTool):
    args_model = TargetArgs
    action = "write"

    def __init__(self) -> None:
        super().__init__("restart_service")

    def preview(self, args: dict[str, Any]) -> str:
        if args["service"] == "unsayable":
            raise ValueError("no idea")
        return f"restarts {args['service']}: {Path(args['path']).name} counts one more"


class RestoreConfig(CounterTool):
    args_model = TargetArgs
    action = "write"

    def __init__(self) -> None:
        super().__init__("restore_config")


class GuardInputs(BaseModel):
    dir: str
    proposal: dict[str, Any] = {}
    fixed: dict[str, Any] | None = None


class GuardState(BaseModel):
    proposal: dict[str, Any] = {}
    errors: list[dict[str, str]] = []
    result: JsonValue = None


def _propose(state: GuardState, ctx: NodeContext) -> dict[str, Any]:
    """A stand-in planner: the scripted proposal first, the fixed one after a rejection."""
    raw = ctx.inputs.get("fixed") if state.errors and ctx.inputs.get("fixed") else None
    proposal = dict(raw or ctx.inputs.get("proposal") or {})  # type: ignore[arg-type]
    if "path" in proposal:
        proposal["path"] = f"{ctx.inputs['dir']}/{proposal['path']}"
    return {"proposal": proposal}


def _act(state: GuardState, ctx: NodeContext) -> dict[str, Any]:
    return dict(state.proposal)


def guarded(name: str, tool: Any, role: str) -> Workflow:
    wf = Workflow(name, state=GuardState, inputs=GuardInputs)
    wf.node("propose", inline=True)(_propose)
    wf.effect(
        tool, "act", role=role, result_field="result", on_reject="propose",
        rejections_field="errors",
    )(_act)  # fmt: skip
    wf.edge("propose", "act")
    wf.edge("act", END)
    return wf


diagnose_writes = guarded("diagnose_writes", RestoreConfig(), "diagnose")
restart = guarded("restart", RestartService(), "mitigate")
restore = guarded("restore", RestoreConfig(), "mitigate")


# -- MCP tools, governed like native ones -------------------------------------------------
class McpInputs(BaseModel):
    proposal: dict[str, Any]


class McpState(BaseModel):
    result: JsonValue = None


def _mcp_tools() -> Any:

    url = os.environ.get("KEEL_TEST_MCP_URL", "http://127.0.0.1:9/mcp")
    return MCPTools(url, read_only=["read_status"])  # the server's own hints are not trusted


mcp_flow = Workflow("mcp_flow", state=McpState, inputs=McpInputs)


@mcp_flow.effect(_mcp_tools(), "call", role="diagnose", result_field="result")
def call_mcp(state: McpState, ctx: NodeContext) -> dict[str, Any]:
    return dict(ctx.inputs["proposal"])  # type: ignore[arg-type]


mcp_flow.edge("call", END)


# -- a governed agent loop: the model calls tools natively, the engine decides ----------


class AgentInputs(BaseModel):
    counter: str  # where the tools count their applications; bound, never the model's


class FixState(AgentState):
    pass


fixer = Workflow("fixer", state=FixState, inputs=AgentInputs, uses_models=True)
agent(
    fixer,
    "fix",
    # restore_config is exempt from approval in tests/policy.csv; drop_* is denied.
    [RestoreConfig(), CounterTool("drop_everything")],
    role="mitigate",
    instructions="Fix the service with the tools you have.",
    bind={"path": "counter"},
    max_turns=4,
)
