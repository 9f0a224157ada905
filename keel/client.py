"""The public Python API: start, watch, resume and inspect runs.

Reads (``runs``, ``show``) go straight to the checkpoint store and need no Ray; writes go
through the orchestrator actor, so there is only ever one writer per run.

On the embedded default (no Ray address configured) there is one Keel instance per store
and host: the first client starts a local Ray and its orchestrator (the *host*); any other
``keel`` process on the same store finds that instance through the orchestrator's lease
record and attaches to it as another Ray driver, rather than starting a second driver. The
host keeps the instance up until every attached process has gone; ``keel up`` hosts one in
the background that outlives terminals.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypedDict, Unpack

import ray
from pydantic import JsonValue
from ray._private import ray_constants
from ray._private.authentication.authentication_token_setup import (
    maybe_enable_token_auth_if_token_available,
)

from keel.actors.messages import (
    ApproveRun,
    CancelRun,
    OrchestratorSettings,
    ResumeRun,
    StartRun,
    WatchRun,
    orchestrator_settings,
)
from keel.actors.planner import ensure_router
from keel.actors.rayerrors import LOST, RayTaskError, unwrap
from keel.actors.shards import Orchestrators
from keel.config import KeelConfig, load_config
from keel.core.events import ApprovalDecided, Event, RunStatus
from keel.core.registry import load_workflow, resolve_ref
from keel.core.state import RunState, RunSummary
from keel.errors import KeelError, RunOwnedError, RunStateError
from keel.runtime.decisions import check_budgets, new_run_id
from keel.runtime.engine import RunView
from keel.runtime.reader import RunReader
from keel.storage import open_store
from keel.storage.leases import Leases, OwnerRecord
from keel.storage.runs import RunStore, check_run_id

log = logging.getLogger("keel.client")
# Ray announces on every start that it turned token authentication on by default; Keel
# wants it on (its own docs say so), so the notice is noise on a user's terminal.
logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)

# Ray binds every service to 127.0.0.1 when this is "0" (its switch for laptop clusters).
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# How every Ray node of a Keel deployment runs (read by each raylet when it starts): an
# idle worker process is kept a minute, not Ray's default second. A run's node tasks
# take a fraction of a CPU, so more of them run at once than the node has CPUs, and
# Ray reaps the workers above that count as soon as they idle; the next tasks then start
# (and import) new processes. Measured with `python -m bench.cost_breakdown` (150 runs,
# 48 in flight, 2 cores): 332 CPU-ms per run went to starting workers with the default
# and 14 with this, and the batch ran 5x faster (242 -> 1,231 runs/min).
RAY_NODE_ENV = {"RAY_idle_worker_killing_time_threshold_ms": "60000"}
# The longest one call to the orchestrator waits for a run to stop, before asking again.
WAIT_CHUNK_S = 60.0

OnEvents = Callable[[list[Event], RunState], None]


def _abs(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else None


Inputs = Mapping[str, JsonValue] | None


class StartOptions(TypedDict, total=False):
    """How ``Keel.start`` starts a run, beyond what and why: its own id (else a new
    one), the principal it runs as (``local``), and this run's tighter budgets."""

    run_id: str | None
    principal: str
    budgets: Mapping[str, Any] | None


class Keel:
    """A handle on one Keel deployment (its storage and its Ray cluster)."""

    def __init__(self, config: KeelConfig | None = None, *, orchestrator_class: Any = None) -> None:
        self.config = config or load_config()
        self.orchestrator_class = orchestrator_class
        self._store: RunStore | None = None
        self._started_ray = False
        self.attached: OwnerRecord | None = None
        self._orchestrators: Orchestrators | None = None
        self._router_lock = threading.Lock()
        self._router: Any = None

    # -- plumbing ---------------------------------------------------------------------
    @property
    def store(self) -> RunStore:
        if self._store is None:
            cfg = self.config.storage
            self._store = RunStore(
                open_store(self.config.storage_url(), dict(cfg.options), fsync=cfg.fsync)
            )
        return self._store

    def settings(self) -> OrchestratorSettings:
        return orchestrator_settings(
            self.config, host_pid=os.getpid() if self._started_ray else None
        )

    def embedded_instance(self) -> OwnerRecord | None:
        """The live embedded instance that drives this store on this host, if any."""
        if self.config.ray.address is not None:
            return None
        return Leases(self.store.store).find_embedded()

    def connect(self) -> None:
        """Join the configured Ray cluster, or start a local one (the embedded default)."""
        address = self.config.ray.address
        if address is None or address.split("//")[-1].startswith(("127.", "localhost")):
            # A cluster on one machine needs no routable address: keep all of Ray's own
            # traffic on loopback. Ray reads this when it is first imported.
            os.environ.setdefault(LOOPBACK_ENV, "0")
            loopback = os.environ[LOOPBACK_ENV] == "0"
        else:
            loopback = False

        if loopback:
            # Ray read the switch when it was imported (maybe before this client existed);
            # without it a loopback address is "resolved" to the machine's routable one.

            ray_constants.ENABLE_RAY_CLUSTER = False

        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = {
            "namespace": "keel",
            "logging_level": logging.WARNING,
            "log_to_driver": False,
        }
        running = self.embedded_instance() if address is None else None
        if running is not None:
            # The instance runs with Ray's token authentication (on by default for a local
            # cluster); Ray loads the token for a cluster it finds with "auto", never for an
            # explicit address, so an attaching process does what "auto" would.
            maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
            kwargs["address"] = running.address
            log.info("attaching to the Keel instance at %s (pid %s)", running.address, running.pid)
            try:
                ray.init(**kwargs)
                self.attached = running
                return
            except Exception as exc:  # it went away between the look and the attach
                log.warning("cannot attach to %s (%s); starting a local instance", running, exc)
        if address is None:
            for name, value in RAY_NODE_ENV.items():  # this process starts the raylet
                os.environ.setdefault(name, value)
            kwargs.update(
                address="local",
                include_dashboard=False,
                num_cpus=self.config.ray.num_cpus,
            )
            self._started_ray = True
        else:
            kwargs["address"] = address
        ray.init(**kwargs)

    def attached_processes(self) -> int:
        """How many other processes use the Ray instance this client started."""

        if not ray.is_initialized():
            return 0
        mine = ray.get_runtime_context().get_job_id()
        jobs = ray._private.state.jobs()  # type: ignore[no-untyped-call]  # the GCS job table
        return sum(1 for j in jobs if not j.get("IsDead") and j.get("JobID") != mine)

    def close(self, *, wait_for_attached: Callable[[int], None] | None = None) -> None:
        """Leave Ray; stop the local instance if this client started it.

        A host first waits while other ``keel`` processes are attached to its instance
        (``wait_for_attached(n)`` is told how many, each time it looks), then gives up its
        orchestrator's lease, so the next instance carries on its unfinished runs at once.
        """

        if self._started_ray:
            while wait_for_attached is not None and (n := self.attached_processes()) > 0:
                wait_for_attached(n)
                time.sleep(1.0)
            for handle in self._orchestrators.known() if self._orchestrators else []:
                try:
                    ray.get(handle.release.remote(), timeout=30)
                except Exception as exc:
                    log.warning("orchestrator did not release its lease: %s", exc)
            ray.shutdown()
            self._started_ray = False
        elif self.attached is not None:
            ray.shutdown()
            self.attached = None
        self._orchestrators = None
        self._router = None

    def orchestrators(self) -> Orchestrators:
        """The deployment's orchestrators (one unless ``orchestrator.shards`` says more),
        each looked up (or created) once per client: a named detached actor's handle stays
        good across its restarts, and the lookup asks the GCS about every node."""
        self.connect()
        if self._orchestrators is None:
            self._orchestrators = Orchestrators(
                self.settings(), self.orchestrator_class, check_storage=True
            )
        return self._orchestrators

    def orchestrator(self, run_id: str | None = None) -> Any:
        """The orchestrator that drives ``run_id`` (the first one, for no run)."""
        return self.orchestrators().for_run(run_id)

    def ensure_router(self) -> Any:
        """Deploy the model router (and the local model) on Serve if it is not running;
        asked once per client (a call to Serve's controller, which a batch made before every
        run). A router gone later is deployed again by a planner's next call."""
        self.connect()

        with self._router_lock:  # one deployment, however many threads start runs
            if self._router is None:
                self._router = ensure_router(self.config.router.model_dump(mode="json"))
            return self._router

    def _call(self, method: str, *args: Any, patience_s: float = 120.0) -> Any:
        """Call the orchestrator of the run the first argument names, riding out its
        restarts; a run another orchestrator of this deployment took over is followed
        there."""
        first = args[0] if args else None
        run_id = first if isinstance(first, str) else getattr(first, "run_id", None)
        orchs = self.orchestrators()
        i, rerouted = orchs.index(run_id), False
        deadline = time.monotonic() + patience_s
        while True:
            try:
                return ray.get(getattr(orchs.at(i), method).remote(*args))
            except RayTaskError as exc:
                err = unwrap(exc)  # the orchestrator's own error, without Ray's
                j = self._owning(orchs, run_id) if isinstance(err, RunOwnedError) else None
                if j is None or j == i or rerouted:
                    raise err from None
                i, rerouted = j, True
            except LOST as exc:
                if isinstance(exc, KeelError) or time.monotonic() > deadline:
                    raise
                log.info("orchestrator unavailable (%s); retrying", type(exc).__name__)
                orchs.forget(i)  # killed for good, it is created again on the next call
                time.sleep(0.5)

    def _owning(self, orchs: Orchestrators, run_id: str | None) -> int | None:
        entry = self.store.read_index(run_id) if run_id else None
        return orchs.owning((entry or {}).get("owner"))

    # -- runs -------------------------------------------------------------------------
    def start(
        self, workflow: str, goal: str = "", inputs: Inputs = None, **how: Unpack[StartOptions]
    ) -> RunState:
        """Validate everything locally first (nothing is written for bad input), then
        ask the orchestrator to create the run. ``budgets`` (Budgets) tighten the
        deployment's limits for this run only."""
        msg = self.check_start(workflow, goal, inputs, **how)
        return self.submit(msg, chosen_id=how.get("run_id") is not None)

    def check_start(
        self, workflow: str, goal: str = "", inputs: Inputs = None, **how: Unpack[StartOptions]
    ) -> StartRun:
        """The request ``start`` would send, checked here without Ray or storage: a
        caller that must start something first (an instance to host the run) learns of
        bad input before it does."""
        ref = resolve_ref(workflow, self.config.workflows)
        wf = load_workflow(ref)
        run_id = how.get("run_id")
        run_id = check_run_id(run_id) if run_id is not None else new_run_id()
        own = check_budgets(how.get("budgets")) or None
        clean = wf.check_inputs(inputs or {}, self.config.tool_roots())
        principal = how.get("principal", "local")
        return StartRun(
            workflow=ref, goal=goal, inputs=clean, principal=principal, run_id=run_id, budgets=own
        )

    def submit(self, msg: StartRun, *, chosen_id: bool = True) -> RunState:
        """Create the run ``check_start`` described. Creation is idempotent by id: an
        orchestrator that restarted after creating it answers with the run (unless the
        caller chose the id, when an existing run is a conflict)."""
        if load_workflow(msg.workflow).uses_models:
            self.ensure_router()
        try:
            state: RunState = self._call("start_run", msg)
        except RunStateError:
            if chosen_id or msg.run_id is None:
                raise
            return self.show(msg.run_id).state
        return state

    def watch(
        self,
        run_id: str,
        on_events: OnEvents | None = None,
        *,
        timeout_s: float | None = None,
        after_seq: int = 0,
    ) -> RunState:
        """Follow a run until it stops running; ``on_events`` sees each new batch.

        Without ``on_events`` nobody reads the events, so this waits for the run to stop
        in one long call (a minute at most, then again) instead of one call per commit:
        a follower (``keel batch``, an eval) then costs the orchestrator nothing while
        the run goes on."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if on_events is None:
            return self._wait(run_id, deadline)
        while True:
            view: RunView = self._call("watch", WatchRun(run_id=run_id, after_seq=after_seq))
            if view.events:
                after_seq = view.events[-1].seq
                if on_events is not None:
                    on_events(view.events, view.state)
            if view.state.status != RunStatus.RUNNING:
                return view.state
            if deadline is not None and time.monotonic() > deadline:
                return view.state

    def _wait(self, run_id: str, deadline: float | None) -> RunState:
        while True:
            left = WAIT_CHUNK_S if deadline is None else deadline - time.monotonic()
            state: RunState = self._call("wait", run_id, max(0.0, min(WAIT_CHUNK_S, left)))
            if state.status != RunStatus.RUNNING:
                return state
            if deadline is not None and time.monotonic() >= deadline:
                return state

    def resume(
        self,
        run_id: str,
        *,
        by: str = "local",
        reason: str = "",
        effect: Literal["applied", "not_applied"] | None = None,
    ) -> RunState:
        view = self.show(run_id)  # fails fast, with no Ray, for an unknown run id
        if view.state.status.terminal:
            raise RunStateError(f"run {run_id} already {view.state.status}", field="run_id")
        try:
            state: RunState = self._call(
                "resume", ResumeRun(run_id=run_id, by=by, reason=reason, effect=effect)
            )
        except RunStateError:
            # The orchestrator's own recovery may have finished the run in the meantime.
            latest = self.show(run_id).state
            if latest.status.terminal and effect is None:
                return latest
            raise
        return state

    def info(self) -> dict[str, Any]:
        """The (first) orchestrator's pid, whether Ray restarted it, what it recovered."""
        result: dict[str, Any] = self._call("info")
        return result

    def approve(
        self, run_id: str, *, principal: str = "local", approved: bool = True, reason: str = ""
    ) -> RunState:
        """Approve (or reject) the action a run is waiting on, as ``principal``; policy
        decides whether that principal may."""
        before = self.show(run_id)
        asked = before.state.approval
        try:
            state: RunState = self._call(
                "approve",
                ApproveRun(run_id=run_id, principal=principal, approved=approved, reason=reason),
            )
        except RunStateError:
            # The orchestrator may have recorded this very answer and then restarted before
            # replying (our retry then finds nothing to approve): that is success.
            after = self.show(run_id)
            if any(
                isinstance(ev, ApprovalDecided)
                and ev.seq > before.state.last_seq
                and ev.principal == principal
                and ev.approved == approved
                and asked is not None
                and ev.args_digest == asked.args_digest
                for ev in after.events
            ):
                return after.state
            raise
        return state

    def cancel(self, run_id: str, *, by: str = "local", reason: str = "") -> RunState:
        self.show(run_id)
        state: RunState = self._call("cancel", CancelRun(run_id=run_id, by=by, reason=reason))
        return state

    def runs(self, status: str | None = None, workflow: str | None = None) -> list[RunSummary]:
        """Index entries of every run, newest first, read from storage."""
        return RunReader(self.store).runs(status, workflow)

    def show(self, run_id: str) -> RunView:
        """A run's state and ledger, folded from its checkpoints in storage."""
        return RunReader(self.store).show(run_id)
