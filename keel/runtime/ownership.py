"""This engine as an owner of runs: its lease, and whether it may write a given run.

A run's owner is the name in its newest checkpoint. The engine keeps its own lease renewed,
judges other owners by theirs (``keel.storage.leases``), and records a takeover with an
``owner_changed`` event before it acts on a run another owner left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from keel.core.events import Event, OwnerChanged
from keel.errors import (
    RunOwnedError,
)
from keel.runtime.runlog import LiveRun, RunLog
from keel.storage.leases import Lease, Leases, split_owner

log = logging.getLogger("keel.engine")


class Ownership:
    """The lease methods of ``RunEngine`` (a mixin; the engine provides what is declared)."""

    lease: Lease
    leases: Leases
    log: RunLog
    runs: dict[str, LiveRun]
    clock: Callable[[], float]
    sleep: Callable[[float], Any]
    _renewer: asyncio.Task[None] | None
    _live: dict[str, tuple[float, bool]]

    @property
    def owner(self) -> str:
        """The name this engine writes into checkpoints (``base@epoch``)."""
        return self.lease.owner

    async def start(self) -> None:
        """Take out this engine's lease and keep it renewed (idempotent)."""
        if self._renewer is None or self._renewer.done():
            await self.log.io(self.lease.renew)
            self._renewer = asyncio.get_running_loop().create_task(self._renew())

    async def _renew(self) -> None:
        while True:
            await self.sleep(self.lease.ttl_s / 4)
            try:
                await self.log.io(self.lease.renew)
            except Exception as exc:  # the next renewal may succeed; effects wait for it
                log.warning("cannot renew lease of %s: %s", self.owner, exc)

    async def close(self, *, release: bool = True) -> None:
        """Stop driving, and give up the lease so another engine may take over at once.

        ``release=False`` stops as a process that died would: the lease stays until it
        expires (or, under the same name, until the next incarnation moves to its epoch).
        """
        tasks = [r.task for r in self.runs.values() if r.task is not None]
        if self._renewer is not None:
            tasks.append(self._renewer)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._renewer = None
        if not release:
            self.runs.clear()
            return
        with contextlib.suppress(Exception):
            await self.log.io(self.lease.release)

    async def _owner_live(self, owner: str | None) -> bool:
        """Whether another engine still vouches for its runs (cached for a second)."""
        if not owner or split_owner(owner)[0] == self.lease.base:
            return False
        now = self.clock()
        cached = self._live.get(owner)
        if cached is not None and now - cached[0] < 1.0:
            return cached[1]
        live = bool(await self.log.io(self.leases.live, owner))
        self._live[owner] = (now, live)
        return live

    async def _writable(self, run: LiveRun) -> list[Event]:
        """Check this engine may write ``run``; the events that record a takeover, if any.

        Raises:
            RunOwnedError: another live engine drives the run.
        """
        if run.owner == self.owner:
            return []
        base, epoch = split_owner(run.owner or "")
        mine, now = split_owner(self.owner)
        if base == mine and epoch > now:
            raise RunOwnedError(
                f"run {run.run_id} was written by a later incarnation of this engine",
                field="run_id",
            )
        if base != mine and await self._owner_live(run.owner):
            raise RunOwnedError(
                f"run {run.run_id} is driven by another Keel instance ({run.owner}); "
                "send this to that instance",
                field="run_id",
            )
        return [
            OwnerChanged(
                previous=run.owner,
                owner=self.owner,
                reason="the previous driver's lease expired" if run.owner else "",
            )
        ]
