"""The step loop: what one step of a run does, from the budget check to the commit.

``RunEngine`` drives each run through ``_drive``; every step decides its events with the
pure functions of ``keel.runtime.decisions`` and commits them through the run log, and an
effect node's proposal passes binding, validation, the tool's own model and policy before
the effect protocol (``keel.runtime.effects``) applies it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from pydantic_core import to_jsonable_python

from keel.config import Budgets
from keel.core.events import (
    Approval,
    BudgetExceeded,
    Event,
    RunFinished,
    RunPaused,
    RunStatus,
)
from keel.core.nodes import NodeContext, NodeOutput
from keel.core.state import RunState
from keel.core.tool import (
    Tool,
    preview,
    tool_action,
    tool_object,
    tool_resource,
    tool_schema,
)
from keel.core.validation import validate_args
from keel.errors import (
    RunOwnedError,
    StorageError,
    WorkflowError,
)
from keel.policy.engine import Decision, PolicyEngine
from keel.runtime.decisions import (
    Step,
    approved_by,
    args_digest,
    as_updates,
    bind_inputs,
    budget_crossed,
    completion,
    error_info,
    failure,
    limits,
    model_event,
    normalise_args,
    policy_event,
    recall_event,
    rejection,
    resolve_proposal,
    unsure,
)
from keel.runtime.effects import EffectProtocol, Hooks, NodeRunner
from keel.runtime.inline import on_loop
from keel.runtime.runlog import LiveRun, RunLog
from keel.storage.leases import Lease

log = logging.getLogger("keel.engine")


class StepLoop:
    """The step methods of ``RunEngine`` (a mixin; the engine provides what is declared)."""

    budgets: Budgets
    clock: Callable[[], float]
    context_env: dict[str, Any]
    effects: EffectProtocol
    hooks: Hooks
    lease: Lease
    log: RunLog
    policy: PolicyEngine
    approve_below: float | None
    runner: NodeRunner
    sleep: Callable[[float], Any]
    tool_roots: list[str]
    _slots: asyncio.Semaphore

    async def _commit(self, run: LiveRun, events: list[Event]) -> None:
        await self.log.commit(run, events)

    async def _writable(self, run: LiveRun) -> list[Event]:
        raise NotImplementedError

    def _drop(self, run: LiveRun) -> None:
        raise NotImplementedError

    def _context(self, st: RunState, node: str) -> NodeContext:
        return NodeContext(
            run_id=st.run_id,
            workflow=st.workflow,
            node=node,
            step=st.step,
            attempt=st.attempt,
            goal=st.goal,
            inputs=st.inputs,
            principal=st.principal,
            env=self.context_env,
        )

    async def _drive(self, run: LiveRun) -> None:
        async with self._slots:
            try:
                takeover = await self._writable(run)
                if takeover:
                    await self._commit(run, takeover)
                while run.state.status == RunStatus.RUNNING:
                    await self._step(run)
            except asyncio.CancelledError:
                raise
            except RunOwnedError as exc:
                log.info("%s stops driving %s: %s", self.lease.owner, run.run_id, exc)
                self._drop(run)
            except Exception:
                # A storage outage or a bug: the run stays as committed and resumes on
                # the next recovery; nothing half-done was published.
                log.exception("run %s stopped; it resumes from its last checkpoint", run.run_id)

    async def _step(self, run: LiveRun) -> None:
        st, wf = run.state, run.workflow
        if not self.lease.fresh():
            await self.log.io(self.lease.renew)
        crossed = budget_crossed(limits(self.budgets, st), st, wf, self.clock())
        if crossed is not None:
            budget, limit, value = crossed
            reason = (
                f"budget {budget} exceeded: {value:g} against a limit of {limit:g} "
                f"(over by {value - limit:g}); handed back to a person"
            )
            await self._commit(
                run,
                [
                    BudgetExceeded(budget=budget, limit=limit, value=value),
                    RunPaused(status=RunStatus.NEEDS_HUMAN, reason=reason),
                ],
            )
            return
        if st.fingerprint != wf.fingerprint():
            reason = (
                f"workflow {wf.name!r} changed shape since this run started "
                f"({st.fingerprint} -> {wf.fingerprint()})"
            )
            await self._commit(run, [RunPaused(status=RunStatus.NEEDS_HUMAN, reason=reason)])
            return
        if st.next_node is None:  # handed to a person after the last node; they resumed it
            await self._commit(run, [RunFinished(status=RunStatus.SUCCEEDED, reason="resumed")])
            return
        node = wf.nodes.get(st.next_node)
        if node is None:
            raise WorkflowError(f"run {st.run_id}: no node {st.next_node!r}", field="next_node")
        step = Step(node, self._context(st, node.name), time.monotonic())
        try:
            if node.is_effect:
                await self._effect_step(run, step)
            else:
                await self._plain_step(run, step)
        except (StorageError, RunOwnedError):
            raise
        except Exception as exc:
            events, delay = failure(step, error_info(exc), step.elapsed())
            await self._commit(run, events)
            if delay is not None:
                await self.sleep(delay)

    async def _plain_step(self, run: LiveRun, step: Step) -> None:
        out = await self._run_node(run, step)
        before: list[Event] = []
        worker = "task" if step.node.kind == "task" else "orchestrator"
        handoff = None
        if isinstance(out, NodeOutput):
            worker = out.worker or worker
            before = [model_event(c, step.node.name, step.ctx.step, worker) for c in out.calls]
            before += [recall_event(r, step.node.name, step.ctx.step, worker) for r in out.recalls]
            handoff = out.handoff
            out = out.updates
        try:
            events = completion(
                run.workflow,
                run.state,
                step,
                as_updates(out),
                worker=worker,
                handoff=handoff,
                duration_s=step.elapsed(),
            )
        except Exception:
            if before:
                await self._commit(run, before)  # the calls were made: they are facts
            raise
        await self._commit(run, [*before, *events])
        await self.hooks.at("after_commit", step.node.name)

    async def _run_node(self, run: LiveRun, step: Step) -> Any:
        await self.hooks.at("before_node", step.node.name)
        node, state_model = step.node, run.workflow.state_of(run.state.data)
        if node.is_async:  # it only awaits: on this loop, whichever runner runs the rest
            work = on_loop(node, state_model, step.ctx)
        else:
            work = self.runner.run_node(node, state_model, step.ctx)
        call = asyncio.ensure_future(work)
        try:
            await self.hooks.at("during_node", step.node.name)
        except BaseException:
            call.cancel()
            raise
        return await call

    async def _effect_step(self, run: LiveRun, step: Step) -> None:
        st, node = run.state, step.node
        pending = st.pending_effect() or st.effect_to_retry()
        if pending is not None:
            tool = node.tool_named(pending.tool)
            if tool is None:
                raise WorkflowError(f"node {node.name!r} has no tool {pending.tool!r}")
            if pending.status == "pending":
                await self.effects.reconcile(run, step, tool, pending)
            else:
                again = dict(pending.args)
                await self.effects.intend_and_apply(run, step, tool, again, [], pending.key)
            return
        out = to_jsonable_python(await self._run_node(run, step))
        tool, args, errors = resolve_proposal(node, out)
        if tool is None:
            await self._reject(run, step, errors, [])
            return
        args, errors = bind_inputs(node, args, st.inputs)
        errors += [e.model_dump() for e in validate_args(tool_schema(tool), args)]
        if not errors:
            args, errors = normalise_args(tool, args, self.tool_roots)
        checks: list[Event] = []
        if not errors:
            decision = self.policy.decide(node.role, tool_object(tool, args), tool_action(tool))
            decision = unsure(decision, run.events, self.approve_below)
            checks.append(policy_event(decision, node.name, step.ctx.step))
            if decision.effect == "deny":
                rule = ", ".join(decision.rule)
                errors = [{"field": "tool", "reason": f"denied by policy rule [{rule}]"}]
            elif decision.effect == "approve" and approved_by(st, step, args) is None:
                await self._ask_approval(run, step, tool, args, decision, checks)
                return
        if errors:
            await self._reject(run, step, errors, checks)
            return
        await self.effects.intend_and_apply(run, step, tool, args, checks)

    async def _ask_approval(
        self,
        run: LiveRun,
        step: Step,
        tool: Tool,
        args: dict[str, Any],
        decision: Decision,
        checks: list[Event],
    ) -> None:
        resource = tool_resource(tool, args)
        request = Approval(
            node=step.node.name,
            step=step.ctx.step,
            tool=tool.name,
            resource=resource,
            object=decision.object,
            args=args,
            args_digest=args_digest(args),
            rule=list(decision.rule),
            change=preview(tool, args),
        )
        # The person sees everything the action will be given, as it will be given it.
        reason = (
            f"{tool.name} on {resource or 'no named resource'} with "
            f"{json.dumps(args, sort_keys=True)} needs a person's approval "
            f"(rule [{', '.join(decision.rule)}]): keel approve {step.ctx.run_id}"
        )
        pause = RunPaused(status=RunStatus.AWAITING_APPROVAL, reason=reason, approval=request)
        await self._commit(run, [*checks, pause])

    async def _reject(
        self, run: LiveRun, step: Step, errors: list[dict[str, str]], checks: list[Event]
    ) -> None:
        limit = limits(self.budgets, run.state).max_rejections
        events = rejection(run.state, step, errors, limit, step.elapsed())
        await self._commit(run, [*checks, *events])
