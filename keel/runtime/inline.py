"""Nodes and tools on the calling process's threads: the engine without Ray.

Used by the fast test tier, benchmarks and the simulator's peers, and anywhere a single
process is enough. Plain nodes have no side effects, so running one on a thread is the same
contract as running it on a Ray task; effects keep their exactly-once protocol because the
engine, not the runner, owns it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, JsonValue
from pydantic_core import to_jsonable_python

from keel.core.nodes import Node, NodeContext, NodeOutput
from keel.core.tool import Tool, Verification
from keel.runtime.effects import ToolSite


def invoke_node(fn: Any, state: BaseModel, ctx: NodeContext) -> Any:
    return node_result(fn(state, ctx))


async def on_loop(node: Node, state: BaseModel, ctx: NodeContext) -> Any:
    """An ``async def`` node, awaited on the engine's event loop within its timeout (the
    engine runs these itself, with any runner)."""
    return node_result(await asyncio.wait_for(node.fn(state, ctx), node.timeout_s))


def node_result(out: Any) -> Any:
    """A node's return value as the engine takes it: its ``NodeOutput``, or its updates."""
    if isinstance(out, NodeOutput):
        return out
    if isinstance(out, BaseModel):
        return out.model_dump(mode="json", exclude_unset=True)
    return out


class InlineNodeRunner:
    """Everything on the calling process's threads: for benchmarks and single-process use.

    A thread cannot be stopped, so an apply whose caller gave up keeps running; it stays
    in ``running`` until its thread ends, which is what reconciliation asks about."""

    def __init__(self) -> None:
        self.running: set[str] = set()

    async def run_node(self, node: Node, state: BaseModel, ctx: NodeContext) -> Any:
        return await asyncio.wait_for(
            asyncio.to_thread(invoke_node, node.fn, state, ctx), node.timeout_s
        )

    async def apply_effect(
        self, tool: Tool, args: dict[str, Any], key: str, *, site: ToolSite
    ) -> JsonValue:
        loop = asyncio.get_running_loop()
        call = loop.run_in_executor(None, tool.apply, args, key)
        self.running.add(key)
        call.add_done_callback(lambda _f: self.running.discard(key))
        result: JsonValue = to_jsonable_python(await asyncio.shield(call))
        return result

    async def verify_effect(
        self, tool: Tool, args: dict[str, Any], key: str, *, site: ToolSite
    ) -> Verification:
        return await asyncio.to_thread(tool.verify, args, key)

    async def effect_running(self, key: str) -> bool:
        return key in self.running
