"""Batch agent jobs: many runs from one JSON-lines file, resumable and idempotent.

Each line is a task with an ``id``; its run id is derived from it (``batch-<id>``), so
storage — not this process — knows which tasks are done. A second invocation on the same
file skips tasks whose runs finished, follows those still running, and starts the rest.
Bad lines are reported with their line number and skipped.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from keel.config import Budgets
from keel.core.events import RunStatus
from keel.errors import InputError, KeelError, RunStateError, first_error
from keel.storage.runs import check_run_id

Outcome = Literal["started", "skipped", "followed", "error"]


class Task(BaseModel):
    """One line of a batch file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    workflow: str | None = Field(default=None, min_length=1, max_length=300)
    goal: str = Field(default="", max_length=20_000)
    inputs: dict[str, JsonValue] = Field(default_factory=dict)
    budgets: Budgets | None = None


class BadLine(BaseModel):
    line: int
    reason: str


class TaskResult(BaseModel):
    id: str
    run_id: str
    outcome: Outcome
    status: str
    reason: str = ""
    duration_s: float = 0.0


def read_tasks(path: Path, default_workflow: str | None) -> tuple[list[Task], list[BadLine]]:
    """Every good task of the file, and every bad line with why."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"file {path}: cannot read it: {exc.strerror}", field="file") from None
    tasks: list[Task] = []
    bad: list[BadLine] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            raw = json.loads(line)
            if not isinstance(raw, dict):
                raise ValueError("a task is a JSON object")
            task = Task.model_validate(raw)
        except ValidationError as exc:
            where, msg = first_error(exc, default="task")
            bad.append(BadLine(line=n, reason=f"{where}: {msg}"))
            continue
        except ValueError as exc:
            bad.append(BadLine(line=n, reason=f"not a JSON object: {exc}"))
            continue
        if task.workflow is None and default_workflow is None:
            bad.append(BadLine(line=n, reason="workflow: missing (and no --workflow given)"))
            continue
        if task.id in seen:
            bad.append(BadLine(line=n, reason=f"id: {task.id!r} already on line {seen[task.id]}"))
            continue
        seen[task.id] = n
        if task.workflow is None:
            task = task.model_copy(update={"workflow": default_workflow})
        tasks.append(task)
    return tasks, bad


TERMINAL = {s.value for s in RunStatus if s.terminal}


def run_id_for(task: Task, prefix: str) -> str:
    return f"{prefix}{task.id}"


class Batch:
    """Submits tasks with at most ``concurrency`` runs in flight and follows each one to
    where it stops; writes one result line per task as it finishes."""

    def __init__(
        self,
        keel: Any,
        tasks: list[Task],
        *,
        concurrency: int = 16,
        prefix: str = "batch-",
        results: Path,
        timeout_s: float | None = None,
        on_result: Callable[[TaskResult], None] | None = None,
    ) -> None:
        if concurrency < 1:
            raise InputError("--concurrency must be at least 1", field="--concurrency")
        try:
            check_run_id(f"{prefix}x")
        except InputError:
            raise InputError(
                f"--prefix {prefix!r}: run ids are letters, digits, '.', '_' or '-'",
                field="--prefix",
            ) from None
        self.keel = keel
        self.tasks = tasks
        self.concurrency = concurrency
        self.prefix = prefix
        self.results_path = results
        self.timeout_s = timeout_s
        self.on_result = on_result
        self._lock = threading.Lock()

    def finished_already(self) -> dict[str, dict[str, Any]]:
        """Index entries of tasks whose runs ended, read from storage (no Ray needed)."""
        done = {}
        for task in self.tasks:
            entry = self.keel.store.read_index(run_id_for(task, self.prefix))
            status = (entry or {}).get("status")
            if entry is not None and status in TERMINAL:
                done[task.id] = entry
        return done

    def _one(self, task: Task) -> TaskResult:
        run_id = run_id_for(task, self.prefix)
        started = time.monotonic()
        outcome: Outcome = "started"
        try:
            try:
                budgets = task.budgets.own() if task.budgets else None
                state = self.keel.start(
                    str(task.workflow), task.goal, task.inputs, run_id=run_id, budgets=budgets
                )
            except RunStateError:
                # Created by an earlier invocation (or just now, before a lost reply).
                outcome = "followed"
                state = self.keel.show(run_id).state
            if state.status == RunStatus.RUNNING:
                state = self.keel.watch(run_id, timeout_s=self.timeout_s, after_seq=state.last_seq)
            return TaskResult(
                id=task.id,
                run_id=run_id,
                outcome=outcome,
                status=str(state.status),
                reason=state.reason[:500],
                duration_s=round(time.monotonic() - started, 3),
            )
        except KeelError as exc:
            return TaskResult(
                id=task.id,
                run_id=run_id,
                outcome="error",
                status="error",
                reason=f"{type(exc).__name__}: {exc}"[:500],
                duration_s=round(time.monotonic() - started, 3),
            )

    def _record(self, result: TaskResult) -> None:
        with self._lock, open(self.results_path, "a") as fh:
            fh.write(result.model_dump_json() + "\n")
        if self.on_result is not None:
            self.on_result(result)

    def run(self, tick: Callable[[TaskResult], None] | None = None) -> list[TaskResult]:
        done = self.finished_already()
        results: list[TaskResult] = [
            TaskResult(
                id=t.id,
                run_id=run_id_for(t, self.prefix),
                outcome="skipped",
                status=str(done[t.id]["status"]),
                reason=str(done[t.id].get("reason") or "")[:500],
            )
            for t in self.tasks
            if t.id in done
        ]
        for r in results:
            if tick is not None:
                tick(r)
        todo = [t for t in self.tasks if t.id not in done]
        if todo:
            self.results_path.parent.mkdir(parents=True, exist_ok=True)
            with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
                futures = [pool.submit(self._one, t) for t in todo]
                for fut in as_completed(futures):
                    result = fut.result()
                    self._record(result)
                    results.append(result)
                    if tick is not None:
                        tick(result)
        order = {t.id: i for i, t in enumerate(self.tasks)}
        results.sort(key=lambda r: order[r.id])
        self._write_all(results)
        return results

    def _write_all(self, results: list[TaskResult]) -> None:
        """The results file, one line per task in file order, replaced atomically."""
        self.results_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.results_path.with_suffix(self.results_path.suffix + ".tmp")
        tmp.write_text("".join(r.model_dump_json() + "\n" for r in results))
        os.replace(tmp, self.results_path)


@contextmanager
def progress_bar(total: int, show: bool) -> Iterator[Callable[[TaskResult], None]]:
    if not show:
        yield lambda _r: None
        return

    counts: dict[str, int] = {}
    with Progress(
        TextColumn("[bold]batch[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
    ) as bar:
        job = bar.add_task("", total=total)

        def tick(r: TaskResult) -> None:
            counts[r.status] = counts.get(r.status, 0) + 1
            text = " ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            bar.update(job, advance=1, description=text)

        yield tick
