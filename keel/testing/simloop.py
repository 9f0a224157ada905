"""An asyncio event loop on virtual time, so a simulation is fast and repeatable.

Nothing here does real I/O: the selector never waits, it moves the clock to the next timer.
With callbacks run in FIFO order and every source of chance drawn from one seeded RNG, a
schedule replays exactly from its seed.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any


class SimulationStalled(RuntimeError):
    """Nothing is ready and no timer is set: every task waits on something that never comes."""


class _VirtualSelector(selectors.BaseSelector):
    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._loop = loop
        self._map: dict[Any, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = selectors.SelectorKey(fileobj, 0, events, data)
        self._map[fileobj] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._map.pop(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise SimulationStalled("no task can make progress and no timer is set")
        self._loop.advance(timeout)
        return []

    def get_map(self) -> Any:
        return self._map

    def close(self) -> None:
        self._map.clear()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """``time()`` is virtual; sleeping costs nothing."""

    def __init__(self) -> None:
        self._now = 0.0
        super().__init__(_VirtualSelector(self))

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += max(0.0, seconds)
