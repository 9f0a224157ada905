"""The durable run loop, free of Ray so it can be read (and benchmarked) on its own.

For every node the engine computes the node's events, folds them into a preview of the
state to validate them, commits them as one checkpoint, and only then moves on. Effects get
an intent checkpoint before they run and a result checkpoint after; a run that restarts
with an intent but no result asks the tool's ``verify()`` instead of running it again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast

from pydantic import BaseModel, ConfigDict, JsonValue, ValidationError
from pydantic_core import to_jsonable_python

from actors.state import (
    ApprovalDecided,
    BudgetExceeded,
    EffectIntent,
    EffectReconciled,
    EffectRecord,
    EffectResult,
    ErrorInfo,
    Event,
    ModelCalled,
    NodeCompleted,
    NodeFailed,
    PolicyDecided,
    ProposalRejected,
    RunCreated,
    RunFinished,
    RunPaused,
    RunResumed,
    RunState,
    RunStatus,
    fold,
    parse_event,
)
from actors.tracing import RunTracer
from actors.validator import validate_args
from actors.workflow import Node, NodeContext, NodeOutput, Workflow
from keel.config import BudgetConfig, RunBudgets
from keel.errors import (
    InputError,
    KeelError,
    NodeError,
    PolicyError,
    RunNotFoundError,
    RunStateError,
    StorageError,
    WorkerLostError,
    WorkflowError,
    first_error,
)
from policy.engine import Decision, PolicyEngine
from sandbox.tool import Tool, Verification, tool_action, tool_schema
from storage.runs import RunStore, check_run_id

log = logging.getLogger("keel.engine")

FaultPoint = Literal["before_node", "during_node", "after_intent", "after_effect", "after_commit"]


class NodeRunner(Protocol):
    """Where node functions and tools actually execute (Ray tasks, a thread, ...)."""

    async def run_node(self, node: Node, state: BaseModel, ctx: NodeContext) -> Any: ...

    async def apply_effect(
        self,
        tool: Tool,
        args: dict[str, Any],
        key: str,
        timeout_s: float | None,
        *,
        role: str = "",
        approved_by: str | None = None,
    ) -> JsonValue: ...

    async def verify_effect(self, tool: Tool, args: dict[str, Any], key: str) -> Verification: ...


class RunView(BaseModel):
    """A run as clients see it: its state, its ledger and anything odd found loading it."""

    model_config = ConfigDict(frozen=True)

    state: RunState
    events: list[Event]
    warnings: list[str] = []
    active: bool = False


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"


def effect_key(run_id: str, step: int, node: str, attempt: int) -> str:
    """The idempotency key of one logical effect: run, step, node and attempt."""
    return f"{run_id}/{step}/{node}/{attempt}"


def error_info(exc: BaseException) -> ErrorInfo:
    if isinstance(exc, KeelError):
        return ErrorInfo.model_validate(exc.to_dict())
    if isinstance(exc, TimeoutError):
        return ErrorInfo(type="TimeoutError", code="node_timeout", message=str(exc), retryable=True)
    return ErrorInfo(
        type=type(exc).__name__, code="node_failed", message=str(exc) or repr(exc), retryable=True
    )


def load_events(raw: Sequence[Mapping[str, Any]]) -> list[Event]:
    return [parse_event(r) for r in raw]


@dataclass
class _Run:
    workflow: Workflow
    state: RunState
    events: list[Event]
    next_n: int
    prev: str | None
    warnings: list[str] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def active(self) -> bool:
        return self.task is not None and not self.task.done()


class RunEngine:
    """Owns every loaded run: creates, drives, recovers, resumes and cancels them."""

    def __init__(
        self,
        store: RunStore,
        runner: NodeRunner,
        resolve: Callable[[str], Workflow],
        *,
        max_concurrent_runs: int = 256,
        crash: Callable[[str], None] | None = None,
        storage_retries: int = 5,
        context_env: dict[str, JsonValue] | None = None,
        policy: PolicyEngine | None = None,
        budgets: BudgetConfig | None = None,
        tracer: RunTracer | None = None,
    ) -> None:
        self.tracer = tracer or RunTracer("none")
        self.context_env = dict(context_env or {})
        self.policy = policy or PolicyEngine()
        self.budgets = budgets or BudgetConfig()
        self.store = store
        self.runner = runner
        self.resolve = resolve
        self.runs: dict[str, _Run] = {}
        self._slots = asyncio.Semaphore(max_concurrent_runs)
        self._faults: dict[str, int] = {}
        self._crash = crash
        self._storage_retries = storage_retries
        self._settled: set[str] = set()

    # -- storage ----------------------------------------------------------------------
    async def _io(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking store call off the event loop, retrying transient failures."""
        delay = 0.1
        for attempt in range(self._storage_retries):
            try:
                return await asyncio.to_thread(fn, *args)
            except StorageError as exc:
                if not exc.retryable or attempt == self._storage_retries - 1:
                    raise
                log.warning("storage call failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    async def _commit(self, run: _Run, events: Sequence[Event]) -> None:
        """Number, fold (to validate), write as one checkpoint, then publish.

        Shielded and serialised per run: a cancelled driver never leaves a write in flight
        that a later commit could race for the same checkpoint number.
        """
        await asyncio.shield(self._commit_serial(run, events))

    async def _commit_serial(self, run: _Run, events: Sequence[Event]) -> None:
        async with run.lock:
            await self._commit_now(run, events)

    async def _commit_now(self, run: _Run, events: Sequence[Event]) -> None:
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
        digest = await self._io(self.store.append, state.run_id, run.next_n, run.prev, payload)
        status_changed = state.status != run.state.status
        run.state, run.prev, run.next_n = state, digest, run.next_n + 1
        run.events.extend(numbered)
        if status_changed:
            await self._io(self.store.write_index, state.run_id, summary(state))
        async with run.changed:
            run.changed.notify_all()
        if state.status.terminal:
            self._forget(run)

    def limits(self, st: RunState) -> BudgetConfig:
        """The deployment's budgets, tightened by the run's own."""
        if not st.budgets:
            return self.budgets
        return self.budgets.tightened(RunBudgets.model_validate(st.budgets))

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
        wf = self.resolve(workflow_ref)
        clean_inputs = wf.check_inputs(inputs)
        own = check_budgets(budgets)
        allowed = self.policy.decide(principal, f"run:{wf.name}", "start")
        if allowed.effect != "allow":
            raise PolicyError(
                f"{principal} may not start {wf.name} runs (rule [{', '.join(allowed.rule)}])",
                field="principal",
            )
        run_id = check_run_id(run_id) if run_id else new_run_id()
        if run_id in self.runs or await self._io(self.store.exists, run_id):
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
        state = fold(None, created, wf.channels)
        digest = await self._io(
            self.store.append, run_id, 0, None, [created.model_dump(mode="json")]
        )
        await self._io(self.store.write_index, run_id, summary(state))
        run = _Run(workflow=wf, state=state, events=[created], next_n=1, prev=digest)
        self.runs[run_id] = run
        self._spawn(run)
        return state

    async def load(self, run_id: str) -> _Run:
        """The loaded run, reading it from the store (and repairing it) on first use."""
        if run_id in self.runs:
            return self.runs[run_id]
        loaded = await self._io(self.store.load, run_id)
        events = load_events(loaded.events)
        if not events:
            raise RunNotFoundError(f"run {run_id} has no readable checkpoint", field="run_id")
        first = events[0]
        assert isinstance(first, RunCreated)
        wf = self.resolve(first.workflow_ref)
        state: RunState | None = None
        for ev in events:
            state = fold(state, ev, wf.channels)
        assert state is not None
        warnings = [f"skipped {s.key}: {s.reason}" for s in loaded.skipped]
        if loaded.skipped:
            await self._io(self.store.quarantine, loaded)
        run = _Run(wf, state, events, loaded.next_n, loaded.last_digest, warnings)
        if state.status.terminal:
            return run  # read-only from here on: not kept in memory
        self.runs.setdefault(run_id, run)
        return self.runs[run_id]

    async def recover(self) -> list[str]:
        """Load every unfinished run from the store and drive the running ones.

        Idempotent and cheap to repeat: runs already driven, and runs known to be
        finished, are skipped. One unreadable run never stops the others.
        """
        resumed = []
        try:
            run_ids = await self._io(self.store.list_run_ids)
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
            log.info("resumed %d run(s): %s", len(resumed), ", ".join(resumed))
        return resumed

    async def _recover_one(self, run_id: str) -> bool:
        run = self.runs.get(run_id)
        if run is None:
            hint = await self._io(self.store.read_index, run_id)
            if hint is not None and RunStatus(hint["status"]).terminal:
                self._settled.add(run_id)
                return False
            run = await self.load(run_id)
            if hint is None or hint.get("status") != run.state.status:
                await self._io(self.store.write_index, run_id, summary(run.state))
        if run.state.status.terminal:
            self._forget(run)
            return False
        return self._spawn(run)

    def _forget(self, run: _Run) -> None:
        """Finished runs leave memory; storage answers for them from now on."""
        self.runs.pop(run.state.run_id, None)
        self._settled.add(run.state.run_id)

    def _spawn(self, run: _Run) -> bool:
        if run.active or run.state.status != RunStatus.RUNNING:
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
        """Continue a paused run; ``effect`` settles an effect whose outcome was unknown."""
        run = await self.load(run_id)
        st = run.state
        if st.status.terminal:
            raise RunStateError(f"run {run_id} already {st.status}", field="run_id")
        events: list[Event] = []
        pending = st.pending_effect()
        if effect is not None:
            if pending is None:
                raise RunStateError(
                    f"run {run_id} has no effect awaiting a decision", field="effect"
                )
            if effect == "applied":
                events.append(EffectResult(key=pending.key, ok=True, reconciled=True))
            else:
                events.append(EffectReconciled(key=pending.key, applied=False, detail=f"by {by}"))
        if st.status != RunStatus.RUNNING:
            events.append(RunResumed(by=by, reason=reason))
        if events:
            await self._commit(run, events)
        self._spawn(run)
        return run.state

    async def cancel(self, run_id: str, *, by: str = "local", reason: str = "") -> RunState:
        run = await self.load(run_id)
        if run.state.status.terminal:
            raise RunStateError(f"run {run_id} already {run.state.status}", field="run_id")
        if run.task is not None and not run.task.done():
            run.task.cancel()
            await asyncio.gather(run.task, return_exceptions=True)
        await self._commit(
            run, [RunFinished(status=RunStatus.CANCELLED, reason=reason or f"cancelled by {by}")]
        )
        return run.state

    async def view(self, run_id: str) -> RunView:
        run = await self.load(run_id)
        return RunView(
            state=run.state, events=list(run.events), warnings=run.warnings, active=run.active
        )

    async def wait(self, run_id: str, timeout_s: float) -> RunState:
        """Return once the run is no longer running (or the timeout passes)."""
        run = await self.load(run_id)
        # A running run nobody drives (its creator died before driving it, say) is driven
        # the moment anyone looks at it, not only at the next sweep.
        self._spawn(run)
        deadline = time.monotonic() + timeout_s
        async with run.changed:
            while run.state.status == RunStatus.RUNNING:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    await asyncio.wait_for(run.changed.wait(), left)
                except TimeoutError:
                    break
        return run.state

    async def watch(self, run_id: str, after_seq: int, timeout_s: float) -> RunView:
        """Long-poll: return the events after ``after_seq`` once there are any, once the run
        stops running, or when the timeout passes."""
        run = await self.load(run_id)
        # A running run nobody drives (its creator died before driving it, say) is driven
        # the moment anyone looks at it, not only at the next sweep.
        self._spawn(run)
        deadline = time.monotonic() + timeout_s
        async with run.changed:
            while run.state.last_seq <= after_seq and run.state.status == RunStatus.RUNNING:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    await asyncio.wait_for(run.changed.wait(), left)
                except TimeoutError:
                    break
        return RunView(
            state=run.state,
            events=[e for e in run.events if e.seq > after_seq],
            warnings=run.warnings,
            active=run.active,
        )

    # -- fault injection (chaos tests) --------------------------------------------------
    def arm_fault(self, point: FaultPoint, node: str, times: int = 1) -> None:
        """Make the process crash the next ``times`` it reaches ``point`` at ``node``."""
        self._faults[f"{point}:{node}"] = times

    def _fault(self, point: FaultPoint, node: str) -> None:
        key = f"{point}:{node}"
        if self._faults.get(key, 0) > 0:
            self._faults[key] -= 1
            log.warning("fault injection: crashing at %s", key)
            if self._crash is None:
                raise RuntimeError(f"fault injected at {key}")
            self._crash(key)

    # -- the run loop -----------------------------------------------------------------
    async def _drive(self, run: _Run) -> None:
        async with self._slots:
            try:
                while run.state.status == RunStatus.RUNNING:
                    await self._step(run)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A storage outage or a bug: the run stays as committed and resumes on
                # the next recovery; nothing half-done was published.
                log.exception(
                    "run %s stopped; it resumes from its last checkpoint", run.state.run_id
                )

    async def _step(self, run: _Run) -> None:
        st, wf = run.state, run.workflow
        crossed = budget_crossed(self.limits(st), st, wf)
        if crossed is not None:
            budget, limit, value = crossed
            await self._commit(
                run,
                [
                    BudgetExceeded(budget=budget, limit=limit, value=value),
                    RunPaused(
                        status=RunStatus.NEEDS_HUMAN,
                        reason=f"budget {budget} exceeded: {value:g} against a limit of "
                        f"{limit:g} (over by {value - limit:g}); handed back to a person",
                    ),
                ],
            )
            return
        if st.fingerprint != wf.fingerprint():
            await self._commit(
                run,
                [
                    RunPaused(
                        status=RunStatus.NEEDS_HUMAN,
                        reason=f"workflow {wf.name!r} changed shape since this run started "
                        f"({st.fingerprint} -> {wf.fingerprint()})",
                    )
                ],
            )
            return
        name = st.next_node
        if name is None:  # handed to a person after the last node; they resumed it
            await self._commit(run, [RunFinished(status=RunStatus.SUCCEEDED, reason="resumed")])
            return
        node = wf.nodes.get(name)
        if node is None:
            raise WorkflowError(f"run {st.run_id}: no node {name!r}", field="next_node")
        ctx = NodeContext(
            run_id=st.run_id,
            workflow=wf.name,
            node=node.name,
            step=st.step,
            attempt=st.attempt,
            goal=st.goal,
            inputs=st.inputs,
            env=self.context_env,
        )
        started = time.monotonic()
        try:
            if not node.is_effect:
                out = await self._run_node(node, wf, st, ctx)
                before: list[Event] = []
                worker = "task" if not node.inline else "orchestrator"
                handoff = None
                if isinstance(out, NodeOutput):
                    worker = out.worker or worker
                    before = [model_event(c, node.name, ctx.step, worker) for c in out.calls]
                    handoff = out.handoff
                    out = out.updates
                await self._complete(
                    run, node, ctx, as_updates(out), before, started, worker, handoff
                )
            else:
                await self._effect_step(run, node, ctx, started)
        except StorageError:
            raise
        except Exception as exc:
            await self._fail(run, node, ctx, exc, started)

    async def _run_node(self, node: Node, wf: Workflow, st: RunState, ctx: NodeContext) -> Any:
        self._fault("before_node", node.name)
        state_model = wf.state_of(st.data)
        call = asyncio.ensure_future(self.runner.run_node(node, state_model, ctx))
        if self._faults.get(f"during_node:{node.name}", 0) > 0:
            await asyncio.sleep(0.2)
            self._fault("during_node", node.name)
        return await call

    async def _effect_step(self, run: _Run, node: Node, ctx: NodeContext, started: float) -> None:
        pending = run.state.pending_effect()
        if pending is not None:
            tool = node.tool_named(pending.tool)
            if tool is None:
                raise WorkflowError(f"node {node.name!r} has no tool {pending.tool!r}")
            await self._reconcile(run, node, tool, ctx, pending, started)
            return
        out = to_jsonable_python(await self._run_node(node, run.workflow, run.state, ctx))
        tool, args, errors = resolve_proposal(node, out)
        if tool is None:
            await self._reject(run, node, ctx, errors, [], started)
            return
        errors = [e.model_dump() for e in validate_args(tool_schema(tool), args)]
        checks: list[Event] = []
        approved_by: str | None = None
        if not errors:
            decision = self.policy.decide(node.role, f"tool:{tool.name}", tool_action(tool))
            checks.append(policy_event(decision, node.name, ctx.step))
            if decision.effect == "deny":
                rule = ", ".join(decision.rule)
                errors = [{"field": "tool", "reason": f"denied by policy rule [{rule}]"}]
            elif decision.effect == "approve":
                approved_by = self._approved_by(run.state, node, ctx, args)
                if approved_by is None:
                    await self._ask_approval(run, node, tool, ctx, args, decision, checks)
                    return
        if errors:
            await self._reject(run, node, ctx, errors, checks, started)
            return
        key = effect_key(ctx.run_id, ctx.step, node.name, ctx.attempt)
        intent = EffectIntent(
            node=node.name, step=ctx.step, attempt=ctx.attempt, key=key, tool=tool.name, args=args
        )
        await self._commit(run, [*checks, intent])
        self._fault("after_intent", node.name)
        await self._apply(run, node, tool, ctx, key, args, started, approved_by)

    @staticmethod
    def _approved_by(
        state: RunState, node: Node, ctx: NodeContext, args: dict[str, Any]
    ) -> str | None:
        """Who approved exactly these arguments for this step, if anyone did."""
        ap = state.approval or {}
        if (
            ap.get("approved") is True
            and ap.get("step") == ctx.step
            and ap.get("node") == node.name
            and ap.get("args_digest") == args_digest(args)
        ):
            return str(ap.get("principal"))
        return None

    async def _ask_approval(
        self,
        run: _Run,
        node: Node,
        tool: Tool,
        ctx: NodeContext,
        args: dict[str, Any],
        decision: Decision,
        checks: list[Event],
    ) -> None:
        request: dict[str, JsonValue] = {
            "node": node.name,
            "step": ctx.step,
            "tool": tool.name,
            "args": args,
            "args_digest": args_digest(args),
            "rule": list(decision.rule),
            "approved": None,
        }
        reason = (
            f"{tool.name} {json.dumps(args, sort_keys=True)[:200]} needs a person's approval "
            f"(rule [{', '.join(decision.rule)}]): keel approve {ctx.run_id}"
        )
        pause = RunPaused(status=RunStatus.AWAITING_APPROVAL, reason=reason, approval=request)
        await self._commit(run, [*checks, pause])

    async def _reject(
        self,
        run: _Run,
        node: Node,
        ctx: NodeContext,
        errors: list[dict[str, str]],
        checks: list[Event],
        started: float,
    ) -> None:
        """A proposal failed validation or policy: record it, then back to the planner,
        or to a person once there have been too many."""
        rejected = ProposalRejected(node=node.name, step=ctx.step, errors=errors)
        summary_ = "; ".join(f"{e['field']}: {e['reason']}" for e in errors)[:500]
        limit = self.limits(run.state).max_rejections
        if run.state.rejections + 1 > limit:
            reason = (
                f"{run.state.rejections + 1} proposals rejected (limit {limit}); last: {summary_}"
            )
            pause = RunPaused(status=RunStatus.NEEDS_HUMAN, reason=reason)
            await self._commit(run, [*checks, rejected, pause])
        elif node.on_reject is not None:
            updates: dict[str, JsonValue] = {}
            if node.rejections_field:
                updates[node.rejections_field] = cast(JsonValue, errors)
            back = NodeCompleted(
                node=node.name,
                step=ctx.step,
                attempt=ctx.attempt,
                updates=updates,
                next=node.on_reject,
                duration_s=time.monotonic() - started,
                worker="validator",
            )
            await self._commit(run, [*checks, rejected, back])
        else:
            info = ErrorInfo(
                type="PolicyError", code="policy", message=f"proposal rejected: {summary_}"
            )
            finished = RunFinished(status=RunStatus.FAILED, error=info, reason=info.message)
            await self._commit(run, [*checks, rejected, finished])

    async def decide_approval(
        self, run_id: str, principal: str, approved: bool, reason: str = ""
    ) -> RunState:
        """A person's answer to an action held for approval; policy decides whether this
        principal may give it (a refusal is recorded too)."""
        run = await self.load(run_id)
        st = run.state
        ap = st.approval or {}
        if st.status != RunStatus.AWAITING_APPROVAL or ap.get("approved") is not None:
            raise RunStateError(f"run {run_id} is not awaiting approval", field="run_id")
        decision = self.policy.decide(principal, f"run:{st.workflow}", "approve")
        node, step = str(ap["node"]), int(cast(int, ap["step"]))
        check = policy_event(decision, node, step)
        if decision.effect != "allow":
            await self._commit(run, [check])
            raise PolicyError(
                f"{principal} may not approve runs of {st.workflow} "
                f"(rule [{', '.join(decision.rule)}])",
                field="principal",
            )
        answer = ApprovalDecided(
            node=node,
            step=step,
            approved=approved,
            principal=principal,
            reason=reason,
            args_digest=str(ap["args_digest"]),
        )
        if approved:
            await self._commit(run, [check, answer, RunResumed(by=principal, reason=reason)])
            self._spawn(run)
        else:
            why = f"{ap.get('tool')} rejected by {principal}" + (f": {reason}" if reason else "")
            done = RunFinished(status=RunStatus.FAILED, reason=why)
            await self._commit(run, [check, answer, done])
        return run.state

    async def _apply(
        self,
        run: _Run,
        node: Node,
        tool: Tool,
        ctx: NodeContext,
        key: str,
        args: dict[str, Any],
        started: float,
        approved_by: str | None = None,
    ) -> None:
        t0 = time.monotonic()
        try:
            result = await self.runner.apply_effect(
                tool, args, key, node.timeout_s, role=node.role, approved_by=approved_by
            )
        except WorkerLostError as exc:
            # The executor died mid-apply (its node went away, say): ask the tool whether
            # the effect happened instead of recording a failure and trying a new key.
            log.warning("run %s: %s; reconciling %s", ctx.run_id, exc, key)
            pending = run.state.pending_effect()
            if pending is None:
                raise
            await self._reconcile(run, node, tool, ctx, pending, started)
            return
        except Exception as exc:
            info = error_info(exc)
            await self._commit(
                run,
                [EffectResult(key=key, ok=False, error=info, duration_s=time.monotonic() - t0)],
            )
            raise NodeError(
                f"effect {tool.name} failed: {info.message}", retryable=info.retryable
            ) from exc
        self._fault("after_effect", node.name)
        done = EffectResult(key=key, ok=True, result=result, duration_s=time.monotonic() - t0)
        updates = {node.result_field: result} if node.result_field else {}
        await self._complete(run, node, ctx, updates, [done], started)

    async def _reconcile(
        self,
        run: _Run,
        node: Node,
        tool: Tool,
        ctx: NodeContext,
        pending: EffectRecord,
        started: float,
    ) -> None:
        try:
            verdict = await self.runner.verify_effect(tool, dict(pending.args), pending.key)
        except Exception as exc:
            verdict = Verification(status="unknown", detail=f"verify() failed: {exc}")
        if verdict.status == "applied":
            done = EffectResult(key=pending.key, ok=True, result=verdict.result, reconciled=True)
            updates = {node.result_field: verdict.result} if node.result_field else {}
            await self._complete(run, node, ctx, updates, [done], started)
        elif verdict.status == "not_applied":
            # Known not to have happened: the same step runs again under the same key.
            await self._commit(
                run, [EffectReconciled(key=pending.key, applied=False, detail=verdict.detail)]
            )
        else:
            await self._commit(
                run,
                [
                    RunPaused(
                        status=RunStatus.NEEDS_HUMAN,
                        reason=f"effect {pending.key} ({tool.name}) was started but its outcome "
                        f"is unknown: {verdict.detail or 'tool cannot verify'}; check it, then "
                        f"`keel resume {ctx.run_id} --effect applied|not_applied`",
                    )
                ],
            )

    async def _complete(
        self,
        run: _Run,
        node: Node,
        ctx: NodeContext,
        updates: dict[str, JsonValue],
        before: list[Event],
        started: float,
        worker: str = "task",
        handoff: str | None = None,
    ) -> None:
        wf = run.workflow
        fields = wf.state_model.model_fields
        if wf.state_model.model_config.get("extra") != "allow":
            for name in updates:
                if name not in fields:
                    raise WorkflowError(
                        f"node {node.name!r} returned unknown state field {name!r}",
                        field=f"updates.{name}",
                    )
        probe = NodeCompleted(
            node=node.name,
            step=ctx.step,
            attempt=ctx.attempt,
            updates=updates,
            next=None,
            duration_s=0.0,
        )
        try:
            preview = fold(run.state, probe, wf.channels)
            nxt = wf.next_node(node.name, wf.state_of(preview.data))
        except Exception as exc:
            if not before:
                raise
            await self._commit(run, before)  # calls made and effects applied are facts
            if not any(isinstance(ev, EffectResult) for ev in before):
                raise
            # The effect happened: never retry the node (that would apply the effect a
            # second time under a new key).
            raise WorkflowError(
                f"node {node.name!r} failed after its effect was applied: {exc}",
                retryable=False,
            ) from exc
        events: list[Event] = [
            *before,
            probe.model_copy(
                update={"next": nxt, "duration_s": time.monotonic() - started, "worker": worker}
            ),
        ]
        if handoff:
            events.append(RunPaused(status=RunStatus.NEEDS_HUMAN, reason=handoff))
        elif nxt is None:
            events.append(RunFinished(status=RunStatus.SUCCEEDED))
        await self._commit(run, events)
        self._fault("after_commit", node.name)

    async def _fail(
        self, run: _Run, node: Node, ctx: NodeContext, exc: BaseException, started: float
    ) -> None:
        info = error_info(exc)
        retry = info.retryable and ctx.attempt < node.retry.attempts
        delay = node.retry.delay(ctx.attempt) if retry else None
        failed = NodeFailed(
            node=node.name,
            step=ctx.step,
            attempt=ctx.attempt,
            error=info,
            retry_in_s=delay,
            duration_s=time.monotonic() - started,
        )
        if delay is not None:
            await self._commit(run, [failed])
            await asyncio.sleep(delay)
            return
        finished = RunFinished(
            status=RunStatus.FAILED, error=info, reason=f"node {node.name} failed"
        )
        await self._commit(run, [failed, finished])


def as_updates(out: Any) -> dict[str, JsonValue]:
    """Normalise what a node returned into JSON-safe state updates."""
    if out is None:
        return {}
    if isinstance(out, BaseModel):
        out = out.model_dump(mode="json", exclude_unset=True)
    if not isinstance(out, Mapping):
        raise WorkflowError(
            f"a node must return a dict of state updates, not {type(out).__name__}",
            field="updates",
        )
    result: dict[str, JsonValue] = to_jsonable_python(dict(out))
    return result


def resolve_proposal(
    node: Node, out: Any
) -> tuple[Tool | None, dict[str, Any], list[dict[str, str]]]:
    """The tool and arguments an effect node proposes. A node with one tool returns the
    arguments; a node offering several returns ``{"tool": NAME, "args": {...}}``."""
    if node.tool is not None:
        return node.tool, out if isinstance(out, dict) else {"_": out}, []
    if not isinstance(out, dict) or not isinstance(out.get("tool"), str):
        return None, {}, [{"field": "tool", "reason": "the proposal names no tool"}]
    tool = node.tool_named(out["tool"])
    if tool is None:
        offered = node.tool_names()
        return None, {}, [{"field": "tool", "reason": f"unknown tool {out['tool']!r}; {offered}"}]
    args = out.get("args", {})
    return tool, args if isinstance(args, dict) else {"_": args}, []


def args_digest(args: dict[str, Any]) -> str:
    """What an approval is bound to: these exact arguments."""
    return hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:16]


def policy_event(decision: Decision, node: str, step: int) -> PolicyDecided:
    return PolicyDecided(
        node=node,
        step=step,
        subject=decision.subject,
        object=decision.object,
        action=decision.action,
        effect=decision.effect,
        rule=list(decision.rule),
        policy_version=decision.policy_version,
    )


def check_budgets(budgets: Mapping[str, Any] | None) -> dict[str, JsonValue]:
    """A run's own budgets, validated (an unknown or negative limit names its field)."""
    if not budgets:
        return {}
    try:
        own = RunBudgets.model_validate(dict(budgets))
    except ValidationError as exc:
        field, msg = first_error(exc, "budgets")
        raise InputError(f"{field}: {msg}", field=field) from None
    dumped: dict[str, JsonValue] = own.model_dump(exclude_none=True)
    return dumped


def budget_crossed(b: BudgetConfig, st: RunState, wf: Workflow) -> tuple[str, float, float] | None:
    """The first budget this run has crossed (or would cross with its next step)."""
    node = wf.nodes.get(st.next_node or "")
    tool_calls = sum(1 for e in st.effects.values() if e.status in ("done", "failed"))
    checks: list[tuple[str, float | None, float]] = [
        ("max_steps", b.max_steps, st.step + 1),
        (
            "max_tool_calls",
            b.max_tool_calls,
            tool_calls + (1 if node is not None and node.is_effect else 0),
        ),
        ("max_model_calls", b.max_model_calls, st.usage.model_calls),
        ("max_cost", b.max_cost, st.usage.cost),
        ("max_wall_s", b.max_wall_s, round(time.time() - st.created_at, 3)),
    ]
    for name, limit, value in checks:
        if limit is not None and value > limit:
            return name, float(limit), float(value)
    return None


def model_event(call: Any, node: str, step: int, worker: str) -> ModelCalled:
    """A worker's ``ModelCall`` as a ledger event (the answer kept for replay, capped)."""
    data = call.model_dump() if isinstance(call, BaseModel) else dict(call)
    response = str(data.pop("content", ""))[:20_000]
    return ModelCalled(node=node, step=step, worker=worker, response=response, **data)


def summary(state: RunState) -> dict[str, Any]:
    """The index entry of a run: enough to list and filter runs without loading them."""
    return {
        "run_id": state.run_id,
        "workflow": state.workflow,
        "status": str(state.status),
        "goal": state.goal[:200],
        "created_at": state.created_at,
        "updated_at": state.updated_at,
        "reason": state.reason[:500],
    }
