"""Reading runs straight from storage, with no Ray and no driver: what ``keel runs``,
``keel show``, the runs API and the client all list and show."""

from __future__ import annotations

from keel.core.events import RunStatus
from keel.core.registry import load_workflow
from keel.core.state import RunSummary, replay
from keel.errors import InputError, KeelError
from keel.runtime.decisions import load_events, summary
from keel.runtime.engine import RunView
from keel.storage.runs import PENDING, RunStore, check_run_id


class RunReader:
    """Lists and shows the runs of one store."""

    def __init__(self, store: RunStore) -> None:
        self.store = store

    def runs(self, status: str | None = None, workflow: str | None = None) -> list[RunSummary]:
        """Index entries of every run, newest first.

        Raises:
            InputError: naming ``status``, for a status no run can have.
        """
        if status is not None and status not in {s.value for s in RunStatus}:
            raise InputError(
                f"unknown status {status!r} (one of {', '.join(s.value for s in RunStatus)})",
                field="status",
            )
        out = []
        for run_id in self.store.list_run_ids():
            raw = self.store.read_index(run_id)
            entry = None if raw is None else RunSummary.model_validate(raw)
            if entry is not None and entry.status == PENDING:
                entry = self._settle_pending(run_id)
            if entry is None:
                continue
            if status is not None and entry.status != status:
                continue
            if workflow is not None and entry.workflow != workflow:
                continue
            out.append(entry)
        return sorted(out, key=lambda e: e.created_at, reverse=True)

    def _settle_pending(self, run_id: str) -> RunSummary | None:
        """An index entry written before its checkpoint 0: a run if the checkpoint exists
        (its creator died before updating the entry), otherwise no run at all."""
        try:
            view = self.show(run_id)
        except KeelError:
            return None
        return summary(view.state)

    def show(self, run_id: str) -> RunView:
        """A run's state and ledger, folded from its checkpoints.

        Raises:
            RunNotFoundError: no checkpoint of this run exists.
        """
        loaded = self.store.load(check_run_id(run_id))
        events = load_events(loaded.events)
        warnings = [f"skipped {s.key}: {s.reason}" for s in loaded.skipped]
        first = events[0]
        channels = {}
        try:
            channels = load_workflow(getattr(first, "workflow_ref", "")).channels
        except KeelError as exc:
            warnings.append(f"workflow not importable here, state shown unreduced: {exc}")
        return RunView(state=replay(events, channels), events=events, warnings=warnings)
