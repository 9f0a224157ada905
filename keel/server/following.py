"""Following a run from the server: what the runs API's event stream, the console's live
page and A2A's task updates all do, asking the orchestrator to wait for new events."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from keel.actors.messages import WatchRun
from keel.core.state import RunState
from keel.runtime.engine import RunView


async def follow(
    orchestrator: Any, run_id: str, after: int, done: Callable[[RunState], bool]
) -> AsyncIterator[RunView]:
    """Each batch of events after ``after`` as the orchestrator hands it over (a quiet wait
    yields a view with none), until a quiet view of a run that ``done`` says is over."""
    while True:
        view: RunView = await orchestrator.watch.remote(
            WatchRun(run_id=run_id, after_seq=after, timeout_s=10)
        )
        if view.events:
            after = view.events[-1].seq
        yield view
        if done(view.state) and not view.events:
            return
