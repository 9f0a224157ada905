"""The durable run loop, free of Ray so it can be read, simulated and benchmarked on its own.

For every node the engine computes the node's events (``actors.decisions``), commits them as
one checkpoint (``actors.runlog``), and only then moves on; effects follow their own protocol
(``actors.effects``). One engine is one *owner*: it drives only runs whose newest checkpoint
it wrote, or whose previous owner's lease has expired (``storage.leases``), and the
checkpoint fence stops it the moment another engine has taken a run over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from keel.config import Budgets, SandboxConfig
from keel.core.events import ApprovalDecided, Event, RunCreated, RunFinished, RunResumed, RunStatus
from keel.core.state import RunState
from keel.core.workflow import Workflow
from keel.errors import ObjectExistsError, PolicyError, RunNotFoundError, RunStateError
from keel.policy.engine import PolicyEngine
from keel.runtime.decisions import (
    Step,
    check_budgets,
    new_run_id,
    policy_event,
)
from keel.runtime.effects import EffectProtocol, Hooks, NodeRunner, NoHooks
from keel.runtime.ownership import Ownership
from keel.runtime.runlog import Blocking, LiveRun, RunLog, on_thread
from keel.runtime.steps import StepLoop
from keel.runtime.tracing import RunTracer
from keel.storage.leases import Lease, Leases
from keel.storage.runs import PENDING, RunStore, check_run_id

log = logging.getLogger("keel.engine")

FaultPoint = Literal["before_node", "during_node", "after_intent", "after_effect", "after_commit"]


class RunView(BaseModel):
    """A run as clients see it: its state, its ledger and anything odd found loading it."""

    model_config = ConfigDict(frozen=True)

    state: RunState
    events: list[Event]
    warnings: list[str] = []
    active: bool = False


class RunEngine(Ownership, StepLoop):
    """Owns every run it drives: creates, drives, recovers, resumes and cancels them."""

    def __init__(
        self,
        store: RunStore,
        runner: NodeRunner,
        resolve: Callable[[str], Workflow],
        *,
        owner: str | None = None,
        lease: Lease | None = None,
        max_concurrent_runs: int = 256,
        storage_retries: int = 5,
        context_env: dict[str, Any] | None = None,
        policy: PolicyEngine | None = None,
        approve_below: float | None = None,
        budgets: Budgets | None = None,
        tracer: RunTracer | None = None,
        hooks: Hooks | None = None,
        tool_roots: list[str] | None = None,
        blocking: Blocking = on_thread,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.tracer = tracer or RunTracer("none")
        # Where tools may act; by default what ``sandbox.roots`` says (KEEL_TOOL_ROOTS).
        self.tool_roots = tool_roots if tool_roots is not None else SandboxConfig().roots
        self.context_env = dict(context_env or {})
        self.policy = policy or PolicyEngine()
        self.approve_below = approve_below  # a write after a less sure answer waits for a person
        self.budgets = budgets or Budgets()
        self.store = store
        self.runner = runner
        self.resolve = resolve
        self.clock = clock
        self.sleep = sleep
        self.hooks: Hooks = hooks or NoHooks()
        leases = Leases(store.store, clock=clock)
        self.lease = lease or Lease(leases, owner or f"engine-{new_run_id()}")
        self.leases = self.lease.leases
        self.log = RunLog(
            store,
            lambda: self.lease.owner,
            tracer=self.tracer,
            retries=storage_retries,
            blocking=blocking,
            sleep=sleep,
            on_commit=self._on_commit,
        )
        self.effects = EffectProtocol(
            self.log, runner, lease_ok=self.lease.fresh, hooks=self.hooks, sleep=sleep
        )
        self.runs: dict[str, LiveRun] = {}
        self._slots = asyncio.Semaphore(max_concurrent_runs)
        self._settled: set[str] = set()
        # Runs between their first write and their entry in ``runs``: recovery and readers
        # must not take them for orphans and start a second driver in this engine.
        self._creating: set[str] = set()
        self._renewer: asyncio.Task[None] | None = None
        self._live: dict[str, tuple[float, bool]] = {}

    # -- lifecycle --------------------------------------------------------------------
    async def create(
        self,
        workflow_ref: str,
        goal: str,
        inputs: Mapping[str, Any],
        *,
        principal: str = "local",
        run_id: str | None = None,
        budgets: Mapping[str, Any] | None = None,
    ) -> RunState:
        """Create a run, commit checkpoint 0, start driving it, and return its state."""
        await self.start()
        wf = self.resolve(workflow_ref)
        clean_inputs = wf.check_inputs(inputs, self.tool_roots)
        own = check_budgets(budgets)
        allowed = self.policy.decide(principal, f"run:{wf.name}", "start")
        if allowed.effect != "allow":
            raise PolicyError(
                f"{principal} may not start {wf.name} runs (rule [{', '.join(allowed.rule)}])",
                field="principal",
            )
        run_id = check_run_id(run_id) if run_id else new_run_id()
        if run_id in self.runs or run_id in self._creating:
            raise RunStateError(f"run {run_id} already exists", field="run_id")
        created = RunCreated(
            seq=1,
            run_id=run_id,
            workflow=wf.name,
            workflow_ref=workflow_ref,
            fingerprint=wf.fingerprint(),
            start=wf.start,
            goal=goal,
            inputs=clean_inputs,
            data=wf.initial_data(),
            principal=principal,
            budgets=own,
        )
        self._creating.add(run_id)
        try:
            if await self.log.exists(run_id):
                raise RunStateError(f"run {run_id} already exists", field="run_id")
            run = await self.log.create(wf, created)
        except ObjectExistsError:
            raise RunStateError(f"run {run_id} already exists", field="run_id") from None
        finally:
            self._creating.discard(run_id)
        self.runs[run_id] = run
        self._spawn(run)
        return run.state

    async def load(self, run_id: str) -> LiveRun:
        """The run, from memory when this engine drives it, else freshly from the store.

        Only runs this engine may drive are kept: a finished run, or one another live
        engine drives, is read again on every call, so it is never shown stale.
        """
        if run_id in self.runs:
            return self.runs[run_id]
        run = await self.log.load(run_id, self.resolve)
        if run_id in self._creating or run_id in self.runs:
            return self.runs.get(run_id, run)  # its creator registers it
        if run.state.status.terminal or await self._owner_live(run.owner):
            return run
        return self.runs.setdefault(run_id, run)

    def _on_commit(self, run: LiveRun) -> None:
        if run.state.status.terminal:
            self._forget(run)

    async def _commit(self, run: LiveRun, events: list[Event]) -> None:
        await self.log.commit(run, events)

    async def recover(self) -> list[str]:
        """Drive every unfinished run that has no live driver.

        Idempotent and cheap to repeat: runs already driven, runs known to be finished and
        runs a live engine drives are skipped. One unreadable run never stops the others.
        """
        await self.start()
        resumed = []
        try:
            run_ids = await self.log.run_ids()
        except Exception as exc:
            log.error("cannot list runs for recovery: %s", exc)
            return []
        for run_id in run_ids:
            if run_id in self._settled:
                continue
            try:
                if await self._recover_one(run_id):
                    resumed.append(run_id)
            except Exception as exc:
                log.error("cannot recover run %s: %s", run_id, exc)
        if resumed:
            log.info("%s resumed %d run(s): %s", self.owner, len(resumed), ", ".join(resumed))
        return resumed

    async def _recover_one(self, run_id: str) -> bool:
        if run_id in self._creating:
            return False  # its creator drives it
        run = self.runs.get(run_id)
        if run is None:
            hint = await self.log.read_index(run_id)
            status = (hint or {}).get("status")
            if status in {s.value for s in RunStatus} and RunStatus(status).terminal:
                self._settled.add(run_id)
                return False
            if hint is not None and await self._owner_live(hint.get("owner")):
                return False  # a live engine drives it
            try:
                run = await self.load(run_id)
            except RunNotFoundError:
                if status != PENDING:
                    raise
                return False  # its creator died before checkpoint 0: it never existed
            if run_id not in self.runs and not run.state.status.terminal:
                return False  # the checkpoints name a live owner the index did not
            if hint is None or status != run.state.status or hint.get("owner") != run.owner:
                await self.log.write_index(run)
        if run.state.status.terminal:
            self._forget(run)
            return False
        return self._spawn(run)

    def _forget(self, run: LiveRun) -> None:
        """Finished runs leave memory; storage answers for them from now on."""
        self.runs.pop(run.run_id, None)
        self._settled.add(run.run_id)

    def _drop(self, run: LiveRun) -> None:
        """Another engine drives this run now: forget it, so it is read afresh."""
        if self.runs.get(run.run_id) is run:
            del self.runs[run.run_id]

    def _spawn(self, run: LiveRun) -> bool:
        if run.active or run.fenced or run.state.status != RunStatus.RUNNING:
            return False
        if self.runs.get(run.run_id) is not run:
            return False
        run.task = asyncio.get_running_loop().create_task(self._drive(run))
        return True

    async def resume(
        self,
        run_id: str,
        *,
        by: str = "local",
        reason: str = "",
        effect: Literal["applied", "not_applied"] | None = None,
    ) -> RunState:
        """Continue a paused run; ``effect`` is a person's answer about an effect whose
        outcome was unknown ("applied" completes its node, "not_applied" runs it again under
        the same key)."""
        await self.start()
        run = await self.load(run_id)
        st = run.state
        if st.status.terminal:
            raise RunStateError(f"run {run_id} already {st.status}", field="run_id")
        self._allowed(by, st, "resume")
        events = await self._writable(run)
        if effect is not None:
            if run.active:
                raise RunStateError(
                    f"run {run_id} is being driven; answer about its effect once it pauses",
                    field="effect",
                )
            node = run.workflow.nodes.get(st.next_node or "")
            if node is None:
                raise RunStateError(
                    f"run {run_id} has no effect awaiting a decision", field="effect"
                )
            step = Step(node, self._context(st, node.name), time.monotonic())
            events += self.effects.answer(run, step, effect, by, reason)
        elif st.status != RunStatus.RUNNING:
            events.append(RunResumed(by=by, reason=reason))
        if events:
            await self._commit(run, events)
        self._spawn(run)
        return run.state

    async def cancel(self, run_id: str, *, by: str = "local", reason: str = "") -> RunState:
        await self.start()
        run = await self.load(run_id)
        if run.state.status.terminal:
            raise RunStateError(f"run {run_id} already {run.state.status}", field="run_id")
        self._allowed(by, run.state, "cancel")
        events = await self._writable(run)
        if run.task is not None and not run.task.done():
            run.task.cancel()
            await asyncio.gather(run.task, return_exceptions=True)
        finished = RunFinished(status=RunStatus.CANCELLED, reason=reason or f"cancelled by {by}")
        await self._commit(run, [*events, finished])
        return run.state

    def _allowed(self, principal: str, st: RunState, action: str) -> None:
        decision = self.policy.decide(principal, f"run:{st.workflow}", action)
        if decision.effect != "allow":
            raise PolicyError(
                f"{principal} may not {action} runs of {st.workflow} "
                f"(rule [{', '.join(decision.rule)}])",
                field="principal",
            )

    async def view(self, run_id: str) -> RunView:
        run = await self.load(run_id)
        return RunView(
            state=run.state, events=list(run.events), warnings=run.warnings, active=run.active
        )

    async def wait(self, run_id: str, timeout_s: float) -> RunState:
        """Return once the run is no longer running (or the timeout passes)."""
        run = await self._until(run_id, lambda r: r.state.status != RunStatus.RUNNING, timeout_s)
        return run.state

    async def watch(self, run_id: str, after_seq: int, timeout_s: float) -> RunView:
        """Long-poll: return the events after ``after_seq`` once there are any, once the run
        stops running, or when the timeout passes."""
        run = await self._until(
            run_id,
            lambda r: r.state.last_seq > after_seq or r.state.status != RunStatus.RUNNING,
            timeout_s,
        )
        return RunView(
            state=run.state,
            events=[e for e in run.events if e.seq > after_seq],
            warnings=run.warnings,
            active=run.active,
        )

    async def _until(
        self, run_id: str, done: Callable[[LiveRun], bool], timeout_s: float
    ) -> LiveRun:
        """Wait for ``done(run)``: on this engine's notifications for a run it drives, by
        reading the store again for a run another engine drives."""
        await self.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        run = await self.load(run_id)
        # A running run nobody drives (its creator died before driving it, say) is driven
        # the moment anyone looks at it, not only at the next sweep.
        self._spawn(run)
        while not done(run):
            left = deadline - loop.time()
            if left <= 0:
                break
            if run.fenced or self.runs.get(run_id) is not run:
                await self.sleep(min(0.5, left))
                run = await self.load(run_id)
                self._spawn(run)
                continue
            async with run.changed:
                if done(run) or run.fenced:
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(run.changed.wait(), left)
        return run

    async def decide_approval(
        self, run_id: str, principal: str, approved: bool, reason: str = ""
    ) -> RunState:
        """A person's answer to an action held for approval; policy decides whether this
        principal may give it (a refusal writes nothing)."""
        await self.start()
        run = await self.load(run_id)
        st = run.state
        ap = st.approval
        if st.status != RunStatus.AWAITING_APPROVAL or ap is None or ap.approved is not None:
            raise RunStateError(f"run {run_id} is not awaiting approval", field="run_id")
        takeover = await self._writable(run)
        node, step = ap.node, ap.step
        # Approving one's own request needs a right of its own (approve_own). A refusal
        # writes nothing: a caller cannot grow a waiting run's ledger by asking.
        action = "approve_own" if principal == st.principal else "approve"
        decision = self.policy.decide(principal, f"run:{st.workflow}", action)
        if decision.effect != "allow":
            why = "approve their own runs of" if action == "approve_own" else "approve runs of"
            raise PolicyError(
                f"{principal} may not {why} {st.workflow} (rule [{', '.join(decision.rule)}])",
                field="principal",
            )
        check = policy_event(decision, node, step)
        answer = ApprovalDecided(
            node=node,
            step=step,
            approved=approved,
            principal=principal,
            reason=reason,
            args_digest=ap.args_digest,
        )
        if approved:
            resumed = RunResumed(by=principal, reason=reason)
            await self._commit(run, [*takeover, check, answer, resumed])
            self._spawn(run)
        else:
            why = f"{ap.tool} rejected by {principal}" + (f": {reason}" if reason else "")
            done = RunFinished(status=RunStatus.FAILED, reason=why)
            await self._commit(run, [*takeover, check, answer, done])
        return run.state
