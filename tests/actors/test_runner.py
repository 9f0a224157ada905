"""Nodes as Ray tasks: a node's timeout is its own running time, not the wait for a worker
(on a busy node, counting the wait force-cancels tasks whose workers were still starting,
and their retries start workers again and time out in turn)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import ray
from pydantic import BaseModel

from keel.actors.runner import RayNodeRunner
from keel.core.nodes import Node, NodeContext
from keel.errors import NodeError

pytestmark = pytest.mark.ray


class Empty(BaseModel):
    pass


def quick(state: Empty, ctx: NodeContext) -> dict[str, Any]:
    return {"ran_at": time.time()}


@ray.remote
def _hold(seconds: float) -> None:
    time.sleep(seconds)


def _ctx() -> NodeContext:
    return NodeContext(
        run_id="r", workflow="w", node="quick", step=1, attempt=1, goal="", inputs={}
    )


async def _free_cpus() -> float:
    """The session's free CPUs, once two readings agree (the count lags a task's end)."""
    last = -1.0
    for _ in range(50):
        now = ray.available_resources().get("CPU", 0.0)
        if now == last:
            return now
        last = now
        await asyncio.sleep(0.3)
    return last


async def _behind_a_task_holding_every_cpu(runner: RayNodeRunner, hold_s: float) -> Any:
    """Run ``quick`` while another task holds every free CPU of the session (actors of
    earlier tests may hold some), so the node waits about ``hold_s`` before it starts."""
    cpus = await _free_cpus()
    assert cpus >= 0.25, f"only {cpus} CPUs free in the session"
    held = _hold.options(num_cpus=cpus).remote(hold_s)
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0.0) >= 0.25:  # until the holder runs
        assert time.monotonic() < deadline, "the holder never started"
        await asyncio.sleep(0.05)
    node = Node(name="quick", fn=quick, timeout_s=2.0)
    try:
        return await runner.run_node(node, Empty(), _ctx())
    finally:
        await held


async def test_waiting_for_a_worker_does_not_count_against_the_timeout(
    ray_session: None,
) -> None:
    submitted = time.time()
    out = await _behind_a_task_holding_every_cpu(RayNodeRunner(node_num_cpus=0.25), 4.0)
    assert out["ran_at"] - submitted > 3.0  # it did wait, longer than its timeout


async def test_a_node_no_worker_starts_in_time_fails_saying_so(ray_session: None) -> None:
    runner = RayNodeRunner(node_num_cpus=0.25, queue_timeout_s=1.0)
    with pytest.raises(NodeError, match=r"waited 1\.0s for a worker") as caught:
        await _behind_a_task_holding_every_cpu(runner, 3.0)
    assert caught.value.code == "node_timeout" and caught.value.retryable
