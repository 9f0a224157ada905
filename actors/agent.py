"""A governed agent loop inside a workflow: the model calls tools natively, the engine
decides what runs.

``agent(wf, "fix", tools, role=...)`` adds four nodes to a workflow:

- ``fix``: one turn. The planner asks the router with the conversation so far and the
  tools as functions; the answer (text and tool calls) joins the conversation, and the
  calls wait in ``pending``. No calls: the text is the final ``answer`` and the loop ends.
- ``fix.call``: the first pending call, as an effect node over all the tools. It goes
  through the same validation, policy, approval and exactly-once execution as any effect
  (its own step, so its own idempotency key).
- ``fix.result`` / ``fix.refused``: the call's result, or why it was refused (the field
  that failed validation, or the rule that denied it), goes back into the conversation as
  the tool's message; the next pending call runs, or the model takes another turn.

Every node is a checkpointed step: after a crash the loop resumes at the step it was in,
so a turn already recorded is not asked again and an applied call is not applied again.
Past ``max_turns`` the run is handed to a person. The workflow's state model extends
``AgentState``, which holds the conversation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field, JsonValue

from keel.actors.worker_messages import ActRequest, ToolSpec
from keel.actors.workers import workers
from keel.core.calls import ChatMessage
from keel.core.nodes import NodeContext, NodeOutput
from keel.core.tool import Tool, check_tool, tool_schema
from keel.core.workflow import END, Workflow


class AgentState(BaseModel):
    """The loop's part of a run's state: the conversation, the calls still to run, what
    the last one returned or why it was refused, and the final answer."""

    messages: list[dict[str, Any]] = Field(default_factory=list)
    pending: list[dict[str, Any]] = Field(default_factory=list)
    turns: int = 0
    call_result: JsonValue = None
    call_errors: list[dict[str, str]] = Field(default_factory=list)
    answer: str = ""


def agent(
    wf: Workflow,
    name: str,
    tools: list[Tool],
    *,
    role: str,
    instructions: str,
    max_turns: int = 8,
    then: str = END,
    bind: dict[str, str] | None = None,
    timeout_s: float = 120.0,
    brief: Callable[[Any, NodeContext], str] | None = None,
) -> None:
    """Add the loop's nodes to ``wf``, entered at ``name`` and left for ``then``.

    The conversation opens with ``instructions`` and the person's message: the run's goal,
    or what ``brief(state, ctx)`` makes of the run so far (what earlier nodes found). A turn
    runs on the orchestrator's event loop, so ``brief`` must be quick: no I/O, no heavy
    work."""
    checked = [check_tool(t) for t in tools]
    specs = [
        ToolSpec(
            name=t.name,
            description=t.description,
            parameters=_parameters(t, bind or {}),
            effect="write" if t.action == "write" else "read",
        )
        for t in checked
    ]
    call, result, refused = f"{name}.call", f"{name}.result", f"{name}.refused"

    # A turn only awaits the planner: it runs on the orchestrator's event loop (no Ray task).
    async def turn(state: AgentState, ctx: NodeContext) -> NodeOutput:
        history = state.messages or [
            {"role": "system", "content": instructions},
            {"role": "user", "content": brief(state, ctx) if brief else ctx.goal},
        ]
        resp = await workers(ctx).planner.aact(
            ActRequest(messages=[ChatMessage.model_validate(m) for m in history], tools=specs)
        )
        said: dict[str, Any] = {"role": "assistant", "content": resp.content or None}
        if resp.tool_calls:
            said["tool_calls"] = resp.tool_calls
        updates: dict[str, Any] = {
            "messages": [*history, said],
            "pending": resp.tool_calls,
            "turns": state.turns + 1,
        }
        if not resp.tool_calls:
            updates["answer"] = resp.content
        handoff = None
        if resp.tool_calls and state.turns + 1 >= max_turns:
            handoff = f"agent {name}: still calling tools after {max_turns} turns"
        return NodeOutput(updates=updates, calls=resp.calls, worker=resp.worker, handoff=handoff)

    def proposal(state: AgentState, ctx: NodeContext) -> dict[str, Any]:
        fn = state.pending[0]["function"]
        try:
            args: Any = json.loads(fn.get("arguments") or "{}")
        except ValueError:
            args = fn.get("arguments")  # not JSON: validation names the field
        return {"tool": fn.get("name"), "args": args}

    def answered(state: AgentState, ctx: NodeContext) -> dict[str, Any]:
        return _reply(state, json.dumps(state.call_result))

    def refusal(state: AgentState, ctx: NodeContext) -> dict[str, Any]:
        why = "; ".join(f"{e['field']}: {e['reason']}" for e in state.call_errors)
        return _reply(state, f"refused: {why}")

    def onward(state: AgentState) -> str:
        return call if state.pending else name

    wf.node(name, timeout_s=timeout_s)(turn)
    wf.route(name, lambda s: call if s.pending else then, [call, then])
    wf.effect(
        checked,
        call,
        role=role,
        result_field="call_result",
        on_reject=refused,
        rejections_field="call_errors",
        bind=bind,
    )(proposal)
    wf.edge(call, result)
    wf.node(result, inline=True)(answered)
    wf.route(result, onward, [call, name])
    wf.node(refused, inline=True)(refusal)
    wf.route(refused, onward, [call, name])


def _reply(state: AgentState, content: str) -> dict[str, Any]:
    """The first pending call answered: its tool message joins the conversation."""
    done = state.pending[0]
    message = {"role": "tool", "tool_call_id": done.get("id"), "content": content[:4000]}
    return {
        "messages": [*state.messages, message],
        "pending": state.pending[1:],
        "call_errors": [],
        "call_result": None,
    }


def _parameters(tool: Tool, bind: dict[str, str]) -> dict[str, Any]:
    """The tool's argument schema as the model sees it: without the arguments bound to
    run inputs, which the model does not choose."""
    schema = tool_schema(tool) or {}
    props = {k: v for k, v in (schema.get("properties") or {}).items() if k not in bind}
    required = [r for r in schema.get("required") or [] if r not in bind]
    return {**schema, "properties": props, "required": required}
