"""Worker pools: N replicas of each role as named, restartable Ray actors.

Calls are spread round-robin; a replica that died is skipped for the next one (Ray
restarts it in the background), so a killed worker costs a retry, not a run.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError

from keel.errors import KeelError

NAMESPACE = "keel"
LOST = (ActorDiedError, ActorUnavailableError)


def worker_name(role: str, index: int, scope: str = "") -> str:
    return f"keel-{role}-{scope}-{index}" if scope else f"keel-{role}-{index}"


class WorkerPool:
    """Handles on one role's replicas, created on first use."""

    def __init__(
        self, role: str, cls: Any, init: tuple[Any, ...] = (), *, size: int = 1, scope: str = ""
    ) -> None:
        self.role = role
        self.handles = [
            cls.options(
                name=worker_name(role, i, scope),
                namespace=NAMESPACE,
                get_if_exists=True,
                lifetime="detached",
                max_restarts=-1,
                max_task_retries=0,
                num_cpus=0,
            ).remote(worker_name(role, i, scope), *init)
            for i in range(size)
        ]
        # Each process (nodes run in many) starts its round-robin at a random replica, so
        # calls from many nodes spread over the whole pool.
        start = random.randrange(size)
        self._next = itertools.cycle([*range(start, size), *range(start)])

    async def call(self, method: str, msg: Any, *, attempts: int | None = None) -> Any:
        """Call ``method(msg)`` on the next replica, moving on from dead ones."""
        tries = attempts or len(self.handles) + 3
        last: Exception | None = None
        for attempt in range(tries):
            handle = self.handles[next(self._next)]
            try:
                return await getattr(handle, method).remote(msg)
            except LOST as exc:
                last = exc
                await asyncio.sleep(min(0.2 * (attempt + 1), 1.0))
        raise KeelError(
            f"no {self.role} replica answered after {tries} tries: {last}",
            retryable=True,
            role=self.role,
        )

    def call_sync(self, method: str, msg: Any) -> Any:
        """The same from synchronous code (a node running as a Ray task)."""
        last: Exception | None = None
        for attempt in range(len(self.handles) + 3):
            handle = self.handles[next(self._next)]
            try:
                return ray.get(getattr(handle, method).remote(msg))
            except LOST as exc:
                last = exc
                import time

                time.sleep(min(0.2 * (attempt + 1), 1.0))
        raise KeelError(f"no {self.role} replica answered: {last}", retryable=True)
