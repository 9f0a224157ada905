"""How ledger events read on a terminal: one line per event, user text escaped."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from rich.markup import escape

from keel.cli.common import out
from keel.core.events import Event
from keel.core.state import RunState
from keel.core.timeline import describe


def print_events(events: Sequence[Event]) -> None:
    for ev in events:
        node, text = describe(ev)
        stamp = time.strftime("%H:%M:%S", time.localtime(ev.ts))
        out.print(
            f"  [dim]#{ev.seq:<3} {stamp}[/dim]  [bold]{escape(node):<14}[/bold] {escape(text)}"
        )


def _follow(keel: Any, state: RunState, after_seq: int = 0) -> RunState:
    with out.status(f"running {escape(state.workflow)} ({state.run_id})", spinner="dots"):
        return keel.watch(  # type: ignore[no-any-return]
            state.run_id, lambda evs, _st: print_events(evs), after_seq=after_seq
        )
