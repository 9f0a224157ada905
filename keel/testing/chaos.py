"""Fault injection for crash tests: an orchestrator that dies at points a test arms.

It is a separate actor class, never the production one, so nobody holding a handle to a
production orchestrator can make it exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

import ray

from keel.actors.messages import OrchestratorSettings
from keel.actors.orchestrator import ACTOR_OPTIONS, OrchestratorActor
from keel.runtime.engine import FaultPoint

log = logging.getLogger("keel.testing")


def exit_process(point: str) -> None:
    log.error("fault injection at %s: exiting the process", point)
    os._exit(1)


class ChaosHooks:
    """Engine hooks that crash at armed points; ``during_node`` waits a moment first, so
    the node's call is in flight when the crash comes."""

    def __init__(self, crash: Callable[[str], None] = exit_process) -> None:
        self.crash = crash
        self.armed: dict[str, int] = {}

    def arm(self, point: FaultPoint, node: str, times: int = 1) -> None:
        self.armed[f"{point}:{node}"] = times

    async def at(self, point: str, node: str) -> None:
        key = f"{point}:{node}"
        if self.armed.get(key, 0) <= 0:
            return
        if point == "during_node":
            await asyncio.sleep(0.2)
        self.armed[key] -= 1
        self.crash(key)


class ChaosOrchestratorActor(OrchestratorActor):
    """The orchestrator, plus ``arm_fault``: crash this process the next time a point is
    reached. Ray restarts it like any orchestrator, without the armed faults."""

    def __init__(self, settings: OrchestratorSettings) -> None:
        self.chaos = ChaosHooks()
        super().__init__(settings, hooks=self.chaos)

    async def arm_fault(self, point: FaultPoint, node: str, times: int = 1) -> None:
        self.chaos.arm(point, node, times)


ChaosOrchestrator = ray.remote(**ACTOR_OPTIONS)(ChaosOrchestratorActor)
