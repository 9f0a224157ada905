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

STARTED = "started"


# Plain nodes are free of side effects (those live in effect nodes), so Ray may run one
# again when its worker or node dies; a node's own exceptions are never retried here (its
# RetryPolicy decides, and the ledger records each attempt). The task first says it has
# started, so that a node's timeout counts its own running time and not the wait for a
# worker: on a busy node, timeouts counted from submission force-cancel tasks whose workers
# were still starting, the next tries start workers again, and time out in turn.
@ray.remote(max_retries=3, retry_exceptions=False, num_returns="streaming")
def _node_task(fn: Any, state: BaseModel, ctx: NodeContext) -> Any:
    yield STARTED
    yield invoke_node(fn, state, ctx)


async def _next(gen: Any) -> Any:
    return await (await gen.__anext__())


async def _await_node(gen: Any, what: str, timeout_s: float | None, queue_s: float) -> Any:
    """The node's result: first its start (within ``queue_s``), then its end (within
    ``timeout_s`` of the start); a cancelled caller stops the task."""
    late = f"{what} waited {queue_s}s for a worker to start it"
    try:
        await asyncio.wait_for(_next(gen), queue_s)
        late = f"{what} timed out after {timeout_s}s"
        return await asyncio.wait_for(_next(gen), timeout_s)
    except asyncio.CancelledError:
        ray.cancel(gen)
        raise
    except TimeoutError:
        ray.cancel(gen, force=True)
        raise NodeError(late, code=ErrorCode.NODE_TIMEOUT, retryable=True) from None
    except RayTaskError as exc:
        raise unwrap(exc) from None
    except TASK_LOST as exc:
        raise task_lost(what, exc) from None


class RayNodeRunner:
    """Plain nodes on Ray tasks (``inline`` ones on the orchestrator's threads); tools on
    the executor pool, the only workers that run tools. (``async def`` nodes never come
    here: the engine awaits them on its own loop.)"""

    def __init__(
        self,
        node_num_cpus: float = 1.0,
        env: dict[str, Any] | None = None,
        *,
        queue_timeout_s: float = 600.0,
    ) -> None:
        self.node_num_cpus = node_num_cpus
        self.env = env or {}
        self.queue_timeout_s = queue_timeout_s

    async def run_node(self, node: Node, state: BaseModel, ctx: NodeContext) -> Any:
        if node.inline:
            return await asyncio.wait_for(
                asyncio.to_thread(invoke_node, node.fn, state, ctx), node.timeout_s
            )
        gen = _node_task.options(num_cpus=self.node_num_cpus, name=f"keel:{node.name}").remote(
            node.fn, state, ctx
        )
        return await _await_node(gen, f"node {node.name}", node.timeout_s, self.queue_timeout_s)

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
