"""Worker pools: N replicas of each role as named, restartable Ray actors.

Calls are spread round-robin; a replica that died is skipped for the next one (Ray
restarts it in the background), so a killed worker costs a retry, not a run. What a worker
raises reaches the caller as its own exception, not inside Ray's wrapper, so a node (and
the ledger) sees a ``RouterError`` as one.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from typing import Any

import ray

from keel.actors.rayerrors import LOST, RayTaskError, unwrap
from keel.errors import KeelError, WorkerLostError

NAMESPACE = "keel"


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
                # Replicas go to different nodes where there are several: one node's loss
                # costs a pool one replica, not all of them.
                scheduling_strategy="SPREAD",
            ).remote(worker_name(role, i, scope), *init)
            for i in range(size)
        ]
        # Each process (nodes run in many) starts its round-robin at a random replica, so
        # calls from many nodes spread over the whole pool.
        start = random.randrange(size)
        self._next = itertools.cycle([*range(start, size), *range(start)])

    async def call(
        self, method: str, msg: Any, *, patience_s: float = 60.0, retry_lost: bool = True
    ) -> Any:
        """Call ``method(msg)`` on the next replica, moving on from dead ones while Ray
        restarts them (up to ``patience_s``). With ``retry_lost=False`` a call lost in
        flight is not sent again: it may have run (an effect), so the caller must find out
        (``WorkerLostError``)."""
        patience = _Patience(self.role, patience_s)
        while True:
            handle = self.handles[next(self._next)]
            try:
                return await getattr(handle, method).remote(msg)
            except LOST as exc:  # first: a worker's own lost callee counts as it being lost
                if not retry_lost:
                    raise WorkerLostError(
                        f"{self.role} lost during {method} ({type(exc).__name__}); "
                        "its outcome is unknown",
                        role=self.role,
                    ) from None
                await asyncio.sleep(patience.lost(exc))
            except RayTaskError as exc:
                raise unwrap(exc) from None

    def call_sync(self, method: str, msg: Any, *, patience_s: float = 60.0) -> Any:
        """The same from synchronous code (a node running as a Ray task)."""
        patience = _Patience(self.role, patience_s)
        while True:
            handle = self.handles[next(self._next)]
            try:
                return ray.get(getattr(handle, method).remote(msg))
            except LOST as exc:
                time.sleep(patience.lost(exc))
            except RayTaskError as exc:
                raise unwrap(exc) from None


class _Patience:
    """How long a caller keeps trying replicas while Ray restarts them: a growing pause
    after each lost one, and an error naming the role once ``patience_s`` is spent."""

    def __init__(self, role: str, patience_s: float) -> None:
        self.role = role
        self.patience_s = patience_s
        self.deadline = time.monotonic() + patience_s
        self.attempt = 0

    def lost(self, exc: Exception) -> float:
        """Seconds to wait before the next replica, or ``KeelError`` when out of time."""
        if time.monotonic() > self.deadline:
            raise KeelError(
                f"no {self.role} replica answered within {self.patience_s:g}s: {exc}",
                retryable=True,
                role=self.role,
            )
        self.attempt += 1
        return min(0.2 * self.attempt, 1.0)
