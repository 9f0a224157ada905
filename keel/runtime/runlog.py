"""The run log: every committed step of the runs an engine holds, and the only way to add one.

It owns sequence numbers, checkpoint numbers, the fence, the index and notification. A
commit numbers the events, folds them into a preview (which validates them), creates the
next numbered checkpoint, and only then publishes the new state. Creating a checkpoint that
already exists means another engine drives the run: the commit raises ``RunFenced`` and the
caller stops driving it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from keel.core.events import Event, RunCreated
from keel.core.state import RunState, fold
from keel.core.workflow import Workflow
from keel.errors import ObjectExistsError, RunNotFoundError, RunOwnedError, StorageError
from keel.runtime.decisions import load_events, summary
from keel.runtime.episodes import episode
from keel.runtime.tracing import RunTracer
from keel.storage.memory import MemoryStore
from keel.storage.runs import PENDING, LoadedRun, RunStore

log = logging.getLogger("keel.engine")


class RunFenced(RunOwnedError):
    """Another engine committed this run's next checkpoint first."""


class Blocking(Protocol):
    """How blocking store calls run: on a thread in production, inline in the simulator."""

    async def __call__(self, fn: Callable[..., Any], *args: Any) -> Any: ...


async def on_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


@dataclass
class LiveRun:
    """A run as the engine that drives it holds it in memory."""

    workflow: Workflow
    state: RunState
    events: list[Event]
    next_n: int
    prev: str | None
    owner: str | None
    warnings: list[str] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    fenced: bool = False
    damaged: LoadedRun | None = None  # checkpoints to move aside before the next write

    @property
    def run_id(self) -> str:
        return self.state.run_id

    @property
    def active(self) -> bool:
        return self.task is not None and not self.task.done()


class RunLog:
    """Commits and loads runs for one owner, retrying transient storage failures."""

    def __init__(
        self,
        store: RunStore,
        owner: Callable[[], str],
        *,
        tracer: RunTracer | None = None,
        retries: int = 5,
        blocking: Blocking = on_thread,
        sleep: Callable[[float], Any] = asyncio.sleep,
        on_commit: Callable[[LiveRun], None] = lambda _run: None,
    ) -> None:
        self.store = store
        self.on_commit = on_commit
        self._owner = owner
        self.tracer = tracer or RunTracer("none")
        self.retries = retries
        self.blocking = blocking
        self.sleep = sleep

    @property
    def owner(self) -> str:
        """The name this engine writes into checkpoints now (its lease's current epoch)."""
        return self._owner()

    async def io(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking store call off the event loop, retrying transient failures."""
        delay = 0.1
        for attempt in range(self.retries):
            try:
                return await self.blocking(fn, *args)
            except StorageError as exc:
                if not exc.retryable or attempt == self.retries - 1:
                    raise
                log.warning("storage call failed (%s); retrying in %.1fs", exc, delay)
                await self.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    async def commit(self, run: LiveRun, events: Sequence[Event]) -> None:
        """Number, fold (to validate), create the next checkpoint, update the index on a
        change of status or owner, then publish the new state to waiters.

        Shielded and serialised per run: a cancelled driver never leaves a write in flight
        that a later commit could race for the same checkpoint number.

        Raises:
            RunFenced: another engine wrote this checkpoint number first.
        """
        await asyncio.shield(self._commit_serial(run, events))

    async def _commit_serial(self, run: LiveRun, events: Sequence[Event]) -> None:
        async with run.lock:
            if run.fenced:
                raise RunFenced(f"run {run.run_id} is driven by another engine", field="run_id")
            await self.quarantine(run)
            await self._commit_now(run, events)
        self.on_commit(run)

    async def _commit_now(self, run: LiveRun, events: Sequence[Event]) -> None:
        state = run.state
        numbered: list[Event] = []
        for i, ev in enumerate(events):
            ev = ev.model_copy(update={"seq": run.state.last_seq + i + 1})
            state = fold(state, ev, run.workflow.channels)
            numbered.append(ev)
        numbered = self.tracer.annotate(state.run_id, numbered)
        payload = [
            ev.model_dump(mode="json", exclude=None if ev.trace_id else {"trace_id", "span_id"})
            for ev in numbered
        ]
        owner = self.owner
        try:
            digest = await self.io(
                self.store.append, state.run_id, run.next_n, run.prev, payload, owner
            )
        except ObjectExistsError:
            run.fenced = True
            async with run.changed:
                run.changed.notify_all()
            raise RunFenced(
                f"run {run.run_id}: checkpoint {run.next_n} was written by another engine; "
                "it drives the run now",
                field="run_id",
            ) from None
        status_changed = state.status != run.state.status
        owner_changed = run.owner != owner
        try:
            if status_changed or owner_changed:
                entry = summary(state, owner).model_dump()
                await self.io(self.store.write_index, state.run_id, entry)
        finally:
            # Only now may anyone see the commit, and all of it at once (no await between):
            # a caller told "succeeded" finds the index saying so too, and a watcher never
            # sees the new events with the old state.
            run.prev, run.next_n = digest, run.next_n + 1
            run.owner = owner
            run.events.extend(numbered)
            run.state = state
        if status_changed:
            await self._remember(run)
        async with run.changed:
            run.changed.notify_all()

    async def _remember(self, run: LiveRun) -> None:
        """The run's episode, once it has ended: memory, so a failure only logs."""
        item = episode(run.state, run.events, run.workflow.signals)
        if item is None:
            return
        try:
            await self.io(MemoryStore(self.store.store).put, item)
        except StorageError as exc:
            log.warning("run %s: its episode was not written (%s)", run.run_id, exc)

    async def create(self, workflow: Workflow, created: RunCreated) -> LiveRun:
        """Write the run's index entry (pending), then its checkpoint 0, then the entry.

        Raises:
            ObjectExistsError: a run with this id already exists.
        """
        state = fold(None, created, workflow.channels)
        owner = self.owner
        pending = {**summary(state, owner).model_dump(), "status": PENDING}
        await self.io(self.store.write_index, state.run_id, pending)
        digest = await self.io(
            self.store.append, state.run_id, 0, None, [created.model_dump(mode="json")], owner
        )
        await self.io(self.store.write_index, state.run_id, summary(state, owner).model_dump())
        return LiveRun(
            workflow=workflow,
            state=state,
            events=[created],
            next_n=1,
            prev=digest,
            owner=owner,
        )

    async def load(self, run_id: str, resolve: Callable[[str], Workflow]) -> LiveRun:
        """A run read and folded from storage; corrupt checkpoints are moved aside only by
        the engine that will write the run next (``quarantine``).

        Raises:
            RunNotFoundError: the run has no readable checkpoint.
        """
        loaded = await self.io(self.store.load, run_id)
        events = load_events(loaded.events)
        if not events:
            raise RunNotFoundError(f"run {run_id} has no readable checkpoint", field="run_id")
        first = events[0]
        assert isinstance(first, RunCreated)
        wf = resolve(first.workflow_ref)
        state: RunState | None = None
        for ev in events:
            state = fold(state, ev, wf.channels)
        assert state is not None
        run = LiveRun(
            workflow=wf,
            state=state,
            events=events,
            next_n=loaded.next_n,
            prev=loaded.last_digest,
            owner=loaded.owner,
            warnings=[f"skipped {s.key}: {s.reason}" for s in loaded.skipped],
            damaged=loaded if loaded.skipped else None,
        )
        return run

    async def quarantine(self, run: LiveRun) -> None:
        """Move the run's unreadable checkpoints aside, so its next one can be written."""
        if run.damaged is not None:
            await self.io(self.store.quarantine, run.damaged)
            run.damaged = None

    async def read_index(self, run_id: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self.io(self.store.read_index, run_id)
        return result

    async def write_index(self, run: LiveRun) -> None:
        """Under the run's lock, so it never lands after (and hides) a newer commit's."""
        async with run.lock:
            await self.io(
                self.store.write_index, run.run_id, summary(run.state, run.owner).model_dump()
            )

    async def run_ids(self) -> list[str]:
        result: list[str] = await self.io(self.store.list_run_ids)
        return result

    async def exists(self, run_id: str) -> bool:
        return bool(await self.io(self.store.exists, run_id))
