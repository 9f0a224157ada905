"""Fault points a test arms: the engine calls ``at`` at each, and an armed one crashes.

Without Ray, so the fast tier's crash matrix and the Ray orchestrator's share one harness:
the orchestrator's crash exits its process, an in-process test's raises ``Crash``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

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


class Crash(BaseException):
    """An in-process stand-in for the process dying: not an ``Exception``, so nothing in
    the engine that handles errors handles it; the task driving the run just ends."""


def raise_crash(point: str) -> None:
    raise Crash(point)
