"""Keel's own tools over MCP, through the same gate as every other way in.

An MCP client is one more caller that can cause effects, so it gets no shortcut: each tool
call needs an API key (the runs API's keys, hashed in ``api.keys``), which names a
principal; policy decides whether that principal may start the gateway's workflow; the
call becomes a recorded run of that workflow, whose one effect node validates the
arguments, asks policy on the tool (as role ``mcp``), holds writes for a person's approval
unless policy exempts them, and applies the tool exactly once on the executor. A call held
for approval answers with the run id and how to approve it; the effect happens only once
someone with the right to approve does.

A registry module declares its tools and the workflow that serves them::

    tools = [MyTool(), OtherTool()]
    gateway = gateway_workflow("ops", tools)     # serve it with governed_app(...)
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field, JsonValue

from keel.core.events import RunStatus
from keel.core.nodes import NodeContext
from keel.core.registry import load_workflow
from keel.core.tool import Tool, tool_action
from keel.core.workflow import END, Workflow
from keel.errors import KeelError

ROLE = "mcp"


class GatewayInputs(BaseModel):
    tool: str = Field(min_length=1, max_length=200)
    args: dict[str, JsonValue] = Field(default_factory=dict)


class GatewayState(BaseModel):
    result: JsonValue = None


def gateway_workflow(name: str, tools: Sequence[Tool]) -> Workflow:
    """The workflow every MCP call to these tools runs as (named ``mcp-NAME``)."""
    wf = Workflow(f"mcp-{name}", state=GatewayState, inputs=GatewayInputs)

    def call(state: GatewayState, ctx: NodeContext) -> dict[str, Any]:
        return {"tool": ctx.inputs["tool"], "args": ctx.inputs.get("args") or {}}

    wf.effect(list(tools), "call", role=ROLE, result_field="result")(call)
    wf.edge("call", END)
    return wf.validate()


class _Caller:
    """Turns one MCP tool call into a governed run and waits for where it stops."""

    def __init__(self, keel: Any, workflow_ref: str, keys: Mapping[str, str], wait_s: float):
        self.keel = keel
        self.ref = workflow_ref
        self.keys = dict(keys)
        self.wait_s = wait_s

    def principal(self, headers: Mapping[str, str]) -> str | None:
        auth = headers.get("authorization", "")
        key = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
        key = key or headers.get("x-api-key", "")
        return self.keys.get(hashlib.sha256(key.encode()).hexdigest()) if key else None

    def call(self, principal: str, tool: str, args: dict[str, Any]) -> Any:
        try:
            state = self.keel.start(
                self.ref, f"MCP call of {tool}", {"tool": tool, "args": args}, principal=principal
            )
            state = self.keel.watch(state.run_id, timeout_s=self.wait_s)
        except KeelError as exc:
            raise ToolError(f"refused: {exc}") from None
        if state.status == RunStatus.SUCCEEDED:
            return state.data.get("result")
        if state.status == RunStatus.AWAITING_APPROVAL:
            raise ToolError(
                f"held for a person's approval: run {state.run_id} "
                f"(keel approve {state.run_id}); nothing has been done yet"
            )
        raise ToolError(f"run {state.run_id} {state.status}: {state.reason}")


def _signature(tool: Tool) -> tuple[inspect.Signature, dict[str, Any]]:
    model: type[BaseModel] | None = getattr(tool, "args_model", None)
    params = []
    annotations: dict[str, Any] = {"return": Any}
    for name, info in model.model_fields.items() if model else []:
        default = inspect.Parameter.empty if info.is_required() else info.default
        params.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=info.annotation
            )
        )
        annotations[name] = info.annotation
    return inspect.Signature(params), annotations


def governed_app(
    keel: Any,
    workflow_ref: str,
    keys: Mapping[str, str],
    *,
    name: str = "keel",
    wait_s: float = 60.0,
) -> Any:
    """An ASGI app serving the gateway workflow's tools over MCP (streamable HTTP at
    ``/mcp``); ``keys`` maps sha256(api key) to principal, as ``api.keys`` does."""

    wf = load_workflow(workflow_ref)
    node = wf.nodes["call"]
    caller = _Caller(keel, workflow_ref, keys, wait_s)
    server = MCPServer(name)
    for tool_name in node.tool_names():
        tool = node.tool_named(tool_name)
        assert tool is not None
        server.add_tool(
            _function(caller, tool),
            name=tool.name,
            description=getattr(tool, "description", "") or tool.name,
            annotations=ToolAnnotations(read_only_hint=tool_action(tool) == "read"),
        )
    app = server.streamable_http_app()

    async def gate(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
            principal = caller.principal(headers)
            if principal is None:
                await _unauthorized(send)
                return
            scope.setdefault("state", {})["keel_principal"] = principal
        await app(scope, receive, send)

    return gate


def _function(caller: _Caller, tool: Tool) -> Any:

    async def call(ctx: Context, **kwargs: Any) -> Any:
        request = ctx.request_context.request
        principal = (getattr(request, "scope", {}) or {}).get("state", {}).get("keel_principal")
        if not principal:
            raise ToolError("a valid API key is required")
        return await asyncio.to_thread(caller.call, principal, tool.name, kwargs)

    signature, annotations = _signature(tool)
    ctx_param = inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context)
    call.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), ctx_param]
    )
    call.__annotations__ = {**annotations, "ctx": Context}
    call.__name__ = tool.name
    return call


async def _unauthorized(send: Any) -> None:
    body = b'{"error": "a valid API key is required (Authorization: Bearer KEY)"}'
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
        }
    )
    await send({"type": "http.response.body", "body": body})
