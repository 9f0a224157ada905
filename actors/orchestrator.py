"""The orchestrator: a named, detached Ray actor that owns the state of every run.

Ray restarts it without limit; each incarnation starts by loading every unfinished run
from the checkpoint store and resuming it from its last good checkpoint. All the run logic
lives in ``actors.engine``; this module is the actor shell around it.

Its owner name (``<host>.<Ray cluster>.<actor name>``) outlives its restarts, so a new
incarnation carries on its predecessor's runs at once; another cluster on the same store
only takes them over once this one's lease has expired. The lease also tells a second
``keel`` process on the same host and store where to find this instance (its Ray address),
so it attaches here instead of starting a second driver.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from keel.actors.messages import (
    ApproveRun,
    CancelRun,
    OrchestratorSettings,
    ResumeRun,
    StartRun,
    WatchRun,
)
from keel.actors.runner import RayNodeRunner
from keel.config import Budgets
from keel.core.registry import load_workflow, resolve_ref
from keel.core.state import RunState
from keel.policy.engine import PolicyEngine
from keel.runtime.effects import Hooks
from keel.runtime.engine import RunEngine, RunView
from keel.runtime.tracing import RunTracer
from keel.storage import open_store
from keel.storage.leases import Lease, Leases, owner_id
from keel.storage.runs import RunStore

log = logging.getLogger("keel.orchestrator")
HEAD_RESOURCE = "node:__internal_head__"

NAMESPACE = "keel"
DEFAULT_NAME = "orchestrator"


def _kick_recovery(handle: Any) -> None:
    """Ask this actor (from a thread of its own) to recover, until a call lands. Waits on
    the reply's future, not ``ray.get``: Ray warns of any ``ray.get`` in an async actor's
    process as if it blocked the event loop, and this one does not."""
    for _ in range(600):
        try:
            handle.recover.remote().future().result(timeout=60)
            return
        except Exception as exc:
            log.warning("recovery call failed (%s); trying again", type(exc).__name__)
            time.sleep(1.0)


def instance_owner(name: str) -> str:
    """This orchestrator's owner name: the same for every incarnation in this Ray cluster."""
    ctx = ray.get_runtime_context()
    return owner_id(socket.gethostname(), ctx.gcs_address.replace(":", "-"), name)


class OrchestratorActor:
    """The actor's body (``Orchestrator`` is it as a Ray actor); see the module docstring.
    Every method takes one typed message."""

    def __init__(self, settings: OrchestratorSettings, hooks: Hooks | None = None) -> None:

        self.settings = settings
        store = open_store(
            settings.storage_url, dict(settings.storage_options), fsync=settings.fsync
        )
        env = settings.node_env()

        def resolve(ref: str) -> Any:
            return load_workflow(ref)

        ctx = ray.get_runtime_context()
        lease = Lease(
            Leases(store),
            instance_owner(settings.name),
            ttl_s=settings.lease_ttl_s,
            kind="embedded" if settings.embedded else "cluster",
            address=ctx.gcs_address,
            host_pid=settings.host_pid,
            # The process that started this local Ray: when it dies, the whole instance,
            # executors included, dies with it. A cluster has no such process.
            pid=settings.host_pid or 0,
        )
        self.engine = RunEngine(
            RunStore(store),
            RayNodeRunner(settings.node_num_cpus, env),
            resolve,
            lease=lease,
            max_concurrent_runs=settings.max_concurrent_runs,
            context_env=env,
            policy=PolicyEngine(settings.policy_model, settings.policy_file),
            approve_below=settings.approve_below_confidence,
            budgets=Budgets.model_validate(settings.budgets),
            tracer=RunTracer(settings.tracing, settings.otlp_endpoint),
            hooks=hooks,
            tool_roots=list(settings.tool_roots),
        )
        self.recovered: list[str] | None = None
        self._recovery: asyncio.Task[list[str]] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        # Recover as soon as the actor is up, without waiting for a caller. A call made
        # while Ray still counts the actor as restarting can be lost, so keep asking until
        # one lands; every other method also starts recovery if it has not started.
        handle = ray.get_runtime_context().current_actor
        threading.Thread(target=_kick_recovery, args=(handle,), daemon=True).start()

    def _start_recovery(self) -> asyncio.Task[list[str]]:
        if self._recovery is None:
            self._recovery = asyncio.get_running_loop().create_task(self._recover_then_sweep())
        return self._recovery

    async def _recover_then_sweep(self) -> list[str]:
        self.recovered = await self.engine.recover()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        return self.recovered

    async def recover(self) -> list[str]:
        """Resume unfinished runs, then keep sweeping for runs whose driver stopped (a
        storage outage longer than the retries, say) so they resume without a restart."""
        return await self._start_recovery()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            try:
                await self.engine.recover()
            except Exception:  # the sweeper must outlive any one bad sweep
                log.exception("sweep failed; trying again in %ss", self.settings.sweep_interval_s)

    async def start_run(self, msg: StartRun) -> RunState:
        self._start_recovery()

        ref = resolve_ref(msg.workflow, self.settings.workflows)
        return await self.engine.create(
            ref,
            msg.goal,
            msg.inputs,
            principal=msg.principal,
            run_id=msg.run_id,
            budgets=msg.budgets,
        )

    async def view(self, run_id: str) -> RunView:
        self._start_recovery()
        return await self.engine.view(run_id)

    async def watch(self, msg: WatchRun) -> RunView:
        self._start_recovery()
        return await self.engine.watch(msg.run_id, msg.after_seq, msg.timeout_s)

    async def wait(self, run_id: str, timeout_s: float) -> RunState:
        self._start_recovery()
        return await self.engine.wait(run_id, timeout_s)

    async def resume(self, msg: ResumeRun) -> RunState:
        self._start_recovery()
        return await self.engine.resume(msg.run_id, by=msg.by, reason=msg.reason, effect=msg.effect)

    async def approve(self, msg: ApproveRun) -> RunState:
        self._start_recovery()
        return await self.engine.decide_approval(
            msg.run_id, msg.principal, msg.approved, msg.reason
        )

    async def cancel(self, msg: CancelRun) -> RunState:
        self._start_recovery()
        return await self.engine.cancel(msg.run_id, by=msg.by, reason=msg.reason)

    async def active_runs(self) -> list[str]:
        return [rid for rid, run in self.engine.runs.items() if run.active]

    async def release(self) -> None:
        """Stop driving and give up the lease, so the next instance need not wait for it
        to expire (a clean shutdown)."""
        await self.engine.close()

    async def spans(self) -> list[dict[str, Any]]:
        """Finished spans, when tracing to memory (for tests and debugging)."""
        return [
            {
                "name": s.name,
                "trace_id": f"{s.context.trace_id:032x}",
                "span_id": f"{s.context.span_id:016x}",
                "parent_id": f"{s.parent.span_id:016x}" if s.parent else None,
                "attributes": dict(s.attributes or {}),
            }
            for s in self.engine.tracer.finished()
        ]

    async def info(self) -> dict[str, Any]:
        ctx = ray.get_runtime_context()
        return {
            "pid": os.getpid(),
            "restarted": ctx.was_current_actor_reconstructed,
            "storage": self.settings.storage_url,
            "recovered": self.recovered,
            "owner": self.engine.owner,
        }


ACTOR_OPTIONS: dict[str, Any] = {"num_cpus": 0, "max_restarts": -1, "max_task_retries": 0}
Orchestrator = ray.remote(**ACTOR_OPTIONS)(OrchestratorActor)


def get_orchestrator(
    settings: OrchestratorSettings, name: str = DEFAULT_NAME, cls: Any = None, index: int = 0
) -> Any:
    """The running orchestrator of this Ray cluster under ``name``, created if there is none.

    The first (``index`` 0) lives on the head node (Ray's ``node:__internal_head__``
    resource), which lasts as long as the cluster: losing a worker node never takes it
    with it. The others of a sharded deployment go to the cluster's other nodes in turn,
    head first, softly: Ray may restart one elsewhere when its node is gone. If an
    orchestrator's process dies, Ray restarts it and it recovers its unfinished runs from
    storage."""
    return (
        (cls or Orchestrator)
        .options(
            name=name,
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            **_placement(index),
        )
        .remote(settings)
    )


def _placement(index: int) -> dict[str, Any]:
    alive = [n for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]
    head = [n for n in alive if HEAD_RESOURCE in (n.get("Resources") or {})]
    others = sorted((n for n in alive if n not in head), key=lambda n: str(n.get("NodeID")))
    nodes = head + others
    if not nodes or (index == 0 and not head):
        return {}  # one orchestrator, on a cluster without the head marker: anywhere
    node = nodes[index % len(nodes)]
    if node in head:
        return {"resources": {HEAD_RESOURCE: 0.001}}
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node["NodeID"], soft=True)}
