"""Fault injection for crash tests: an orchestrator that dies at points a test arms.

It is a separate actor class, never the production one, so nobody holding a handle to a
production orchestrator can make it exit.
"""

from __future__ import annotations

import ray

from keel.actors.messages import OrchestratorSettings
from keel.actors.orchestrator import ACTOR_OPTIONS, OrchestratorActor
from keel.runtime.engine import FaultPoint
from keel.testing.faults import ChaosHooks


class ChaosOrchestratorActor(OrchestratorActor):
    """The orchestrator, plus ``arm_fault``: crash this process the next time a point is
    reached. Ray restarts it like any orchestrator, without the armed faults."""

    def __init__(self, settings: OrchestratorSettings) -> None:
        self.chaos = ChaosHooks()
        super().__init__(settings, hooks=self.chaos)

    async def arm_fault(self, point: FaultPoint, node: str, times: int = 1) -> None:
        self.chaos.arm(point, node, times)


ChaosOrchestrator = ray.remote(**ACTOR_OPTIONS)(ChaosOrchestratorActor)
