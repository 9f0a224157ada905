"""Node functions and tools executed as Ray tasks, so a slow node never blocks other runs."""

from __future__ import annotations

import asyncio
from typing import Any

import ray
from pydantic import BaseModel, JsonValue

from keel.actors.rayerrors import TASK_LOST, RayTaskError, task_lost, unwrap
from keel.actors.worker_messages import ExecuteRequest, ExecuteResponse
from keel.actors.workers import pool
from keel.core.nodes import Node, NodeContext
from keel.core.tool import Tool, Verification
from keel.errors import ErrorCode, NodeError
from keel.runtime.effects import ToolSite
from keel.runtime.inline import invoke_node


# Plain nodes are free of side effects (those live in effect nodes), so Ray may run one
# again when its worker or node dies; a node's own exceptions are never retried here (its
# RetryPolicy decides, and the ledger records each attempt).
@ray.remote(max_retries=3, retry_exceptions=False)
def _node_task(fn: Any, state: BaseModel, ctx: NodeContext) -> Any:
    return invoke_node(fn, state, ctx)


async def _await(ref: Any, what: str, timeout_s: float | None, *, abortable: bool = True) -> Any:
    """Await a task's result; a cancelled caller stops the task unless it is an effect,
    which is left to finish (its outcome is settled by ``verify`` later)."""

    async def get() -> Any:
        return await ref

    try:
        return await asyncio.wait_for(get(), timeout_s)
    except asyncio.CancelledError:
        if abortable:
            ray.cancel(ref)
        raise
    except TimeoutError:
        ray.cancel(ref, force=True)
        raise NodeError(
            f"{what} timed out after {timeout_s}s", code=ErrorCode.NODE_TIMEOUT, retryable=True
        ) from None
    except RayTaskError as exc:
        raise unwrap(exc) from None
    except TASK_LOST as exc:
        raise task_lost(what, exc) from None


class RayNodeRunner:
    """Plain nodes on Ray tasks (``inline`` ones on the orchestrator's threads); tools on
    the executor pool, the only workers that run tools."""

    def __init__(self, node_num_cpus: float = 1.0, env: dict[str, Any] | None = None) -> None:
        self.node_num_cpus = node_num_cpus
        self.env = env or {}

    async def run_node(self, node: Node, state: BaseModel, ctx: NodeContext) -> Any:
        if node.inline:
            return await asyncio.wait_for(
                asyncio.to_thread(invoke_node, node.fn, state, ctx), node.timeout_s
            )
        ref = _node_task.options(num_cpus=self.node_num_cpus, name=f"keel:{node.name}").remote(
            node.fn, state, ctx
        )
        return await _await(ref, f"node {node.name}", node.timeout_s)

    async def _execute(self, msg: ExecuteRequest) -> ExecuteResponse:
        # An apply lost in flight may have happened: it is never sent again blindly.
        try:
            resp: ExecuteResponse = await pool("executor", self.env).call(
                "execute", msg, retry_lost=msg.verify_only
            )
        except RayTaskError as exc:
            raise unwrap(exc) from None
        return resp

    async def apply_effect(
        self, tool: Tool, args: dict[str, Any], key: str, *, site: ToolSite
    ) -> JsonValue:
        msg = ExecuteRequest(
            workflow_ref=site.workflow_ref, node=site.node, tool=tool.name, args=args, key=key
        )
        resp = await self._execute(msg)
        return resp.result

    async def verify_effect(
        self, tool: Tool, args: dict[str, Any], key: str, *, site: ToolSite
    ) -> Verification:
        msg = ExecuteRequest(
            workflow_ref=site.workflow_ref,
            node=site.node,
            tool=tool.name,
            args=args,
            key=key,
            verify_only=True,
        )
        resp = await asyncio.wait_for(self._execute(msg), 60.0)
        return Verification.model_validate(resp.verification)

    async def effect_running(self, key: str) -> bool:
        """Whether any executor replica still runs a call under ``key``; a replica that
        does not answer has died, and its call with it."""
        executors = pool("executor", self.env)
        answers = await asyncio.gather(
            *(h.running.remote(key) for h in executors.handles), return_exceptions=True
        )
        return any(a is True for a in answers)
