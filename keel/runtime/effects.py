"""The effect protocol: intent, apply, reconcile, and a person's answer.

An effect is recorded as an intent (checkpoint) before it is applied and as a result
(checkpoint) after. Whenever its outcome is not known for certain (the driver restarted
between the two, the executor was lost, the call outlived its timeout) the effect is never
applied again blindly: the tool's own ``verify()`` is asked, and only a definite
"not applied" about a call that is known to be over lets it run again, under the same key
and with the same arguments. Anything less certain goes to a person, whose answer is final
and recorded with their name.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel, JsonValue

from keel.core.events import (
    EffectIntent,
    EffectReconciled,
    EffectResult,
    Event,
    RunPaused,
    RunResumed,
    RunStatus,
)
from keel.core.nodes import Node, NodeContext
from keel.core.state import EffectRecord, RunState
from keel.core.tool import Tool, Verification
from keel.errors import NodeError, RunOwnedError, RunStateError, WorkerLostError, WorkflowError
from keel.runtime.decisions import Step, completion, error_info
from keel.runtime.runlog import LiveRun, RunLog

log = logging.getLogger("keel.engine")


class NodeRunner(Protocol):
    """Where node functions and tools actually execute (Ray tasks, a thread, ...); an
    ``async def`` node is not among them, the engine awaits it on its own loop.

    ``apply_effect`` has no timeout of its own: the effect protocol decides what a slow call
    means. Cancelling the awaiting coroutine asks the runner to stop the call where it can;
    ``effect_running`` says whether a call under a key may still be under way.
    """

    async def run_node(self, node: Node, state: BaseModel, ctx: NodeContext) -> Any: ...

    async def apply_effect(
        self, tool: Tool, args: dict[str, Any], key: str, *, site: ToolSite
    ) -> JsonValue: ...

    async def verify_effect(
        self, tool: Tool, args: dict[str, Any], key: str, *, site: ToolSite
    ) -> Verification: ...

    async def effect_running(self, key: str) -> bool: ...


@dataclass(frozen=True)
class ToolSite:
    """Where a tool is declared: a runner that executes elsewhere (the executor pool) names
    the tool by this, and never ships the tool object."""

    workflow_ref: str
    node: str


class LeaseLost(RunOwnedError):
    """This engine's lease is too close to expiry to start an effect; another engine may
    take the run over, so this one stops driving it."""


class Hooks(Protocol):
    """Points where a test harness may interrupt the engine (none in production)."""

    async def at(self, point: str, node: str) -> None: ...


class NoHooks:
    async def at(self, point: str, node: str) -> None:
        return None


class EffectProtocol:
    """Applies and settles effects for one engine."""

    def __init__(
        self,
        log_: RunLog,
        runner: NodeRunner,
        *,
        lease_ok: Callable[[], bool],
        hooks: Hooks,
        sleep: Callable[[float], Any] = asyncio.sleep,
        settle_poll_s: float = 0.5,
    ) -> None:
        self.log = log_
        self.runner = runner
        self.lease_ok = lease_ok
        self.hooks = hooks
        self.sleep = sleep
        self.settle_poll_s = settle_poll_s

    # -- intent and apply ----------------------------------------------------------------
    async def intend_and_apply(
        self,
        run: LiveRun,
        step: Step,
        tool: Tool,
        args: dict[str, Any],
        before: list[Event],
        key: str | None = None,
    ) -> None:
        """Record the intent (with the checks that allowed it), then apply it."""
        key = key or step.key
        if not self.lease_ok():
            self._check_lease(run)
        intent = EffectIntent(
            node=step.node.name,
            step=step.ctx.step,
            attempt=step.ctx.attempt,
            key=key,
            tool=tool.name,
            args=args,
        )
        await self.log.commit(run, [*before, intent])
        await self.hooks.at("after_intent", step.node.name)
        await self.apply(run, step, tool, key, args)

    def _check_lease(self, run: LiveRun) -> None:
        """An effect starts only while this engine's lease holds for half a term, and only
        for a run whose newest checkpoint this engine wrote under its current epoch (so no
        other engine can have taken it over in between)."""
        if run.owner is not None and run.owner != self.log.owner:
            raise LeaseLost(
                f"run {run.run_id}: this engine's lease lapsed since it last wrote the run; "
                "it re-takes the run before acting on it",
                field="run_id",
            )
        if not self.lease_ok():
            raise LeaseLost(
                f"run {run.run_id}: this engine's lease is too close to expiry to start an "
                "effect; it stops driving the run",
                field="run_id",
            )

    async def apply(
        self,
        run: LiveRun,
        step: Step,
        tool: Tool,
        key: str,
        args: dict[str, Any],
    ) -> None:
        """Apply under the node's deadline; a call that outlives it (and its grace) is
        settled through ``verify``, never retried under a new key."""
        node = step.node
        self._check_lease(run)
        t0 = time.monotonic()
        site = ToolSite(run.state.workflow_ref, node.name)
        call = asyncio.ensure_future(self.runner.apply_effect(tool, args, key, site=site))
        try:
            result = await _within(call, node.timeout_s, node.grace_s)
        except WorkerLostError as exc:
            # The executor died mid-apply: the call is over, so verify() is authoritative.
            log.warning("run %s: %s; reconciling %s", run.run_id, exc, key)
            await self.reconcile(run, step, tool, self._pending(run, key), wait_s=0.0)
            return
        except _Overdue:
            log.warning("run %s: effect %s outlived its timeout; reconciling", run.run_id, key)
            await self.reconcile(run, step, tool, self._pending(run, key), wait_s=1.0)
            return
        except Exception as exc:
            info = error_info(exc)
            failed = EffectResult(key=key, ok=False, error=info, duration_s=time.monotonic() - t0)
            await self.log.commit(run, [failed])
            raise NodeError(
                f"effect {tool.name} failed: {info.message}", retryable=info.retryable
            ) from exc
        await self.hooks.at("after_effect", node.name)
        done = EffectResult(key=key, ok=True, result=result, duration_s=time.monotonic() - t0)
        await self.complete(run, step, result, [done])

    @staticmethod
    def _pending(run: LiveRun, key: str) -> EffectRecord:
        rec = run.state.effects.get(key)
        if rec is None:
            raise RunStateError(f"run {run.run_id}: no intent for effect {key}")
        return rec

    async def complete(
        self, run: LiveRun, step: Step, result: JsonValue, before: list[Event]
    ) -> None:
        """Complete an effect node with its result. If the workflow cannot route on from
        here, the effect's record is still committed and the node is never retried (that
        would apply the effect again under a new key)."""
        node = step.node
        updates: dict[str, JsonValue] = {node.result_field: result} if node.result_field else {}
        try:
            events = completion(run.workflow, run.state, step, updates, duration_s=step.elapsed())
        except Exception as exc:
            await self.log.commit(run, before)
            raise WorkflowError(
                f"node {node.name!r} failed after its effect was applied: {exc}",
                retryable=False,
            ) from exc
        await self.log.commit(run, [*before, *events])
        await self.hooks.at("after_commit", node.name)

    # -- reconcile ------------------------------------------------------------------------
    async def reconcile(
        self,
        run: LiveRun,
        step: Step,
        tool: Tool,
        pending: EffectRecord,
        *,
        wait_s: float | None = None,
    ) -> None:
        """Settle an effect whose outcome is unknown: verify first, then a person.

        ``verify()`` is trusted to say "not applied" only once no call under the key is
        under way (the runner is asked, waiting up to ``wait_s``, by default the node's
        grace period, for a call to end)."""
        key = pending.key
        if wait_s is None:
            wait_s = step.node.grace_s if step.node.grace_s is not None else 0.0
        still_running = await self._running(key, wait_s)
        try:
            site = ToolSite(run.state.workflow_ref, step.node.name)
            verdict = await self.runner.verify_effect(tool, dict(pending.args), key, site=site)
        except Exception as exc:
            verdict = Verification(status="unknown", detail=f"verify() failed: {exc}")
        if verdict.status == "applied":
            done = EffectResult(key=key, ok=True, result=verdict.result, reconciled=True)
            await self.complete(run, step, verdict.result, [done])
            return
        if verdict.status == "not_applied" and not still_running:
            # Known not to have happened, and no call is under way: it runs again, under
            # the same key, with the same arguments.
            await self.log.commit(
                run, [EffectReconciled(key=key, applied=False, detail=verdict.detail)]
            )
            return
        why = (
            "its call may still be under way after its timeout"
            if still_running
            else verdict.detail or "the tool cannot verify it"
        )
        reason = (
            f"effect {key} ({tool.name}) was started but its outcome is unknown: {why}; "
            f"check it, then `keel resume {run.run_id} --effect applied|not_applied`"
        )
        await self.log.commit(run, [RunPaused(status=RunStatus.NEEDS_HUMAN, reason=reason)])

    async def _running(self, key: str, wait_s: float) -> bool:
        """Whether a call under ``key`` is still under way after waiting up to ``wait_s``
        for it to end. A runner that cannot tell counts as "still running"."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            try:
                running = await self.runner.effect_running(key)
            except Exception as exc:
                log.warning("cannot tell whether effect %s is still running: %s", key, exc)
                running = True
            if not running:
                return False
            if loop.time() >= deadline:
                return True
            await self.sleep(self.settle_poll_s)

    # -- a person's answer ----------------------------------------------------------------
    def answer(
        self,
        run: LiveRun,
        step: Step,
        effect: Literal["applied", "not_applied"],
        by: str,
        reason: str,
    ) -> list[Event]:
        """The events for a person's answer about an effect whose outcome was unknown:
        "applied" completes the node with the effect counted as done; "not_applied" lets
        the same intent run again under the same key. Either way the run resumes.

        Raises:
            RunStateError: the run has no effect awaiting a decision.
        """
        st: RunState = run.state
        pending = st.pending_effect()
        if pending is None:
            raise RunStateError(
                f"run {st.run_id} has no effect awaiting a decision", field="effect"
            )
        resumed = RunResumed(by=by, reason=reason)
        if effect == "not_applied":
            gone = EffectReconciled(key=pending.key, applied=False, detail=reason, by=by)
            return [gone, resumed]
        done = EffectResult(key=pending.key, ok=True, reconciled=True, by=by)
        node = step.node
        updates: dict[str, JsonValue] = {node.result_field: None} if node.result_field else {}
        events = completion(run.workflow, st, step, updates, worker="person")
        return [done, resumed, *events]


class _Overdue(Exception):
    """The apply call outlived its timeout and its grace period."""


async def _within(call: asyncio.Future[Any], timeout_s: float | None, grace_s: float | None) -> Any:
    """The call's result if it ends within its timeout, or within the grace period after
    it (a late result is still a fact); otherwise ask the runner to stop it and raise
    ``_Overdue`` without waiting further."""
    if timeout_s is None:
        return await call
    limit = timeout_s + (grace_s if grace_s is not None else timeout_s)
    done, _ = await asyncio.wait({call}, timeout=limit)
    if call in done:
        return call.result()
    call.cancel()
    raise _Overdue()
