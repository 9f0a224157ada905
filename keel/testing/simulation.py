"""Deterministic simulation of the run engine: thousands of interleavings, each from a seed.

In the spirit of FoundationDB's simulator and TigerBeetle's VOPR: several engines (Keel
processes) drive runs of a two-effect workflow over one store, with no Ray and on virtual
time. A seeded scheduler interleaves run creation, storage failures (some ambiguous),
orchestrator crashes at every fault point and at random moments, whole-process deaths,
frozen processes whose leases expire, slow, stuck and lost effect calls, tools that fail or
cannot verify, and people who approve, answer and resume. Then the world heals, every run
is driven to an end, and the invariants are checked against the tool's own counters.

Run ``python -m keel.testing.simrun --schedules 2000`` (or ``--seed N -v`` to replay one).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, JsonValue

from keel.core.events import EffectResult, RunStatus
from keel.core.nodes import NodeContext
from keel.core.state import append, replay
from keel.core.workflow import END, Workflow
from keel.errors import KeelError
from keel.policy.engine import PolicyEngine
from keel.runtime.decisions import load_events
from keel.runtime.engine import RunEngine
from keel.runtime.tracing import RunTracer
from keel.storage.envelope import open_sealed
from keel.storage.leases import Lease, Leases, OwnerRecord, split_owner
from keel.storage.runs import RunStore
from keel.testing.simworld import Faults, Process, SimRunner, SimStore, SimTool, World

TIMEOUT_S, GRACE_S, TTL_S = 1.0, 1.0, 8.0


class SendArgs(BaseModel):
    n: int


class SimState(BaseModel):
    trail: Annotated[list[str], append] = []
    sent: JsonValue = None
    restarted: JsonValue = None


def _workflow() -> Workflow:
    wf = Workflow("simflow", state=SimState)
    send, restart = SimTool("send_message"), SimTool("restart_service")  # restart: approval
    send.args_model = restart.args_model = SendArgs

    @wf.node(inline=True)
    def plan(state: SimState, ctx: NodeContext) -> dict[str, Any]:
        return {"trail": "plan"}

    @wf.effect(send, role="mitigate", result_field="sent", timeout_s=TIMEOUT_S, grace_s=GRACE_S)
    def deliver(state: SimState, ctx: NodeContext) -> dict[str, Any]:
        return {"n": 1}

    @wf.node()  # async: on the engine's own loop, as a model step would be
    async def check(state: SimState, ctx: NodeContext) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"trail": "check"}

    @wf.effect(
        restart, role="mitigate", result_field="restarted", timeout_s=TIMEOUT_S, grace_s=GRACE_S
    )
    def mitigate(state: SimState, ctx: NodeContext) -> dict[str, Any]:
        return {"n": 2}

    wf.edge("plan", "deliver")
    wf.edge("deliver", "check")
    wf.edge("check", "mitigate")
    wf.edge("mitigate", END)
    return wf.validate()


WORKFLOW = _workflow()
POLICY = PolicyEngine()
TRACER = RunTracer("none")


@dataclass
class Outcome:
    """What one schedule did, and which invariants it broke."""

    seed: int
    violations: list[str] = field(default_factory=list)
    runs: int = 0
    applied: int = 0
    crashes: int = 0
    takeovers: int = 0
    answers: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations


class _Dead(Exception):
    """A storage call by an engine whose process has crashed."""


@dataclass
class _Incarnation:
    process: Process
    engine: RunEngine
    dead: bool = False
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)


class _Hooks:
    """Crashes the orchestrator at the engine's fault points, now and then."""

    def __init__(self, sim: Simulation, inc: list[_Incarnation]) -> None:
        self.sim, self.inc = sim, inc

    async def at(self, point: str, node: str) -> None:
        if self.sim.chaos and self.sim.rng.random() < 0.03:
            self.sim.crash(self.inc[0], restart=True)
            raise asyncio.CancelledError()


class Simulation:
    """One schedule, from one seed."""

    def __init__(self, seed: int, runs: int = 4, drivers: int = 2, horizon_s: float = 40.0):
        self.seed = seed
        self.rng = random.Random(seed)
        self.faults = Faults()
        self.world = World(self.rng, self.faults)
        self.store = SimStore(self.world)
        self.runs, self.drivers, self.horizon_s = runs, drivers, horizon_s
        self.live: list[_Incarnation] = []
        self.visibly_dead: dict[str, float] = {}
        self.acknowledged: set[str] = set()
        self.chaos = True
        self.outcome = Outcome(seed)
        self._names = itertools.count(1)
        self._seen: dict[str, tuple[tuple[int, str], Any]] = {}

    # -- processes ------------------------------------------------------------------------
    def _alive(self, rec: OwnerRecord) -> bool:
        return rec.owner not in self.visibly_dead

    def spawn(self, process: Process | None = None) -> _Incarnation:
        proc = process or Process(owner=f"p{next(self._names)}")
        holder: list[_Incarnation] = []
        loop = asyncio.get_running_loop()

        async def blocking(fn: Any, *args: Any) -> Any:
            await asyncio.sleep(self.rng.choice((0.0, 0.0, 0.0, 0.002, 0.02)))
            while proc.frozen_until > loop.time():  # noqa: ASYNC110 - virtual time
                await asyncio.sleep(proc.frozen_until - loop.time())
            if holder[0].dead:
                raise _Dead(proc.owner)
            return fn(*args)

        leases = Leases(self.store, clock=loop.time, alive=self._alive)
        runner = SimRunner(self.world, proc, TIMEOUT_S, GRACE_S)
        engine = RunEngine(
            RunStore(self.store),
            runner,
            lambda _ref: WORKFLOW,
            lease=Lease(leases, proc.owner, ttl_s=TTL_S, host="sim", pid=1),
            policy=POLICY,
            hooks=_Hooks(self, holder),
            tracer=TRACER,
            blocking=blocking,
            clock=loop.time,
        )
        runner.name = lambda: engine.owner
        inc = _Incarnation(proc, engine)
        holder.append(inc)
        self.live.append(inc)
        inc.tasks.append(loop.create_task(self._sweep(inc)))
        return inc

    async def _sweep(self, inc: _Incarnation) -> None:
        while not inc.dead:
            with contextlib.suppress(Exception):
                await inc.engine.recover()
            await asyncio.sleep(self.rng.uniform(1.0, 3.0))

    def crash(self, inc: _Incarnation, *, restart: bool) -> None:
        """The orchestrator dies (``restart``: Ray brings it back under the same owner, its
        executors untouched) or the whole process dies (its executors' calls never land)."""
        if inc.dead:
            return
        inc.dead = True
        self.outcome.crashes += 1
        self.live.remove(inc)
        tasks = [*inc.tasks, *(r.task for r in inc.engine.runs.values() if r.task)]
        tasks.append(inc.engine._renewer)  # type: ignore[arg-type]
        current = asyncio.current_task()
        for task in tasks:
            if task is not None and task is not current:
                task.cancel()
        loop = asyncio.get_running_loop()
        if restart:
            loop.call_later(self.rng.uniform(0.1, 3.0), self._respawn, inc.process)
            return
        inc.process.kill()
        if self.rng.random() < 0.5:  # same host: others can see the pid is gone
            self.visibly_dead[inc.process.owner] = loop.time()
        loop.call_later(self.rng.uniform(0.1, 3.0), self._respawn, None)

    def _respawn(self, process: Process | None) -> None:
        if self.chaos or not self.live:
            self.spawn(process)

    # -- the actors of a schedule -----------------------------------------------------------
    async def _create(self, i: int) -> None:
        await asyncio.sleep(self.rng.uniform(0.0, self.horizon_s / 2))
        run_id = f"run{i}"
        for _ in range(20):
            if self.live:
                inc = self.rng.choice(self.live)
                try:
                    await inc.engine.create("sim", "simulate", {}, run_id=run_id)
                    self.acknowledged.add(run_id)
                    return
                except KeelError as exc:
                    if "already exists" in exc.message:
                        self.acknowledged.add(run_id)
                        return
                except _Dead:
                    pass
            await asyncio.sleep(self.rng.uniform(0.2, 2.0))

    async def _chaos(self) -> None:
        loop = asyncio.get_running_loop()
        while self.chaos:
            await asyncio.sleep(self.rng.uniform(1.0, 6.0))
            if not self.chaos or not self.live:
                continue
            inc = self.rng.choice(self.live)
            roll = self.rng.random()
            if roll < 0.35:
                self.crash(inc, restart=True)
            elif roll < 0.6:
                self.crash(inc, restart=False)
            elif roll < 0.85:
                inc.process.frozen_until = loop.time() + self.rng.uniform(1.0, 3 * TTL_S)
            elif len(self.live) < self.drivers + 1:
                self.spawn()  # another process starts on the same store

    async def _person(self) -> None:
        while True:
            await asyncio.sleep(self.rng.uniform(0.5, 3.0))
            for run_id in self._run_ids():
                with contextlib.suppress(KeelError, _Dead):
                    await self._look_at(run_id)

    async def _look_at(self, run_id: str) -> None:
        state = self._truth(run_id)
        if state is None or not self.live:
            return
        engine = self.rng.choice(self.live).engine
        if state.status == RunStatus.AWAITING_APPROVAL:
            await engine.decide_approval(run_id, "alice", self.rng.random() < 0.9, "looks fine")
            self.outcome.answers += 1
        elif state.status == RunStatus.NEEDS_HUMAN:
            pending = state.pending_effect()
            if pending is None:
                await engine.resume(run_id, by="alice")
            elif not any(pending.key in inc.process.inflight for inc in self.live):
                # A careful person answers from the world, once no call is under way.
                applied = self.world.applied[pending.key] > 0
                answer = "applied" if applied else "not_applied"
                await engine.resume(run_id, by="alice", effect=answer)  # type: ignore[arg-type]
            self.outcome.answers += 1

    # -- reading the truth ------------------------------------------------------------------
    def _run_ids(self) -> list[str]:
        prefix = "runs/"
        return sorted({k.split("/")[1] for k in self.store.objects if k.startswith(prefix)})

    def _truth(self, run_id: str) -> Any:
        """The run as its checkpoints say, read past any injected fault (cached until a
        checkpoint of it changes)."""
        prefix = f"runs/{run_id}/"
        keys = [k for k in self.store.objects if k.startswith(prefix)]
        stamp = (len(keys), max(keys, default=""))
        cached = self._seen.get(run_id)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        faulty, self.store.faulty = self.store.faulty, False
        try:
            events = load_events(RunStore(self.store).load(run_id).events)
            state = replay(events, WORKFLOW.channels)
        except KeelError:
            state = None
        finally:
            self.store.faulty = faulty
        self._seen[run_id] = (stamp, state)
        return state

    # -- one schedule -----------------------------------------------------------------------
    async def main(self) -> Outcome:
        loop = asyncio.get_running_loop()
        for _ in range(self.drivers):
            self.spawn()
        background = [loop.create_task(self._create(i)) for i in range(self.runs)]
        background += [loop.create_task(self._chaos()), loop.create_task(self._person())]
        await asyncio.sleep(self.horizon_s)
        await self._heal()
        deadline = loop.time() + 900.0
        while loop.time() < deadline and not self._settled():  # noqa: ASYNC110
            await asyncio.sleep(1.0)
        for task in background:
            task.cancel()
        for inc in list(self.live):
            inc.dead = True
            for task in [*inc.tasks, *(r.task for r in inc.engine.runs.values() if r.task)]:
                task.cancel()
        await asyncio.sleep(0)
        self._check()
        return self.outcome

    async def _heal(self) -> None:
        """Faults stop; every process is restarted once (stuck calls die with them)."""
        self.chaos = False
        self.store.faulty = False
        self.world.faults = self.faults.off()
        for inc in list(self.live):
            self.crash(inc, restart=False)
        self.spawn()

    def _settled(self) -> bool:
        ids = self._run_ids()
        return all(
            (st := self._truth(r)) is not None and st.status.terminal for r in ids
        ) and self.acknowledged <= set(ids)

    # -- invariants -------------------------------------------------------------------------
    def _check(self) -> None:
        v = self.outcome.violations
        self.store.faulty = False
        run_ids = self._run_ids()
        self.outcome.runs = len(run_ids)
        self.outcome.applied = sum(self.world.applied.values())
        for key, n in self.world.applied.items():
            if n > 1:
                v.append(f"effect {key} applied {n} times")
        listed = set(RunStore(self.store).list_run_ids())
        for run_id in sorted(self.acknowledged - set(run_ids)):
            v.append(f"run {run_id} was acknowledged but has no checkpoint 0")
        for run_id in run_ids:
            if run_id not in listed:
                v.append(f"run {run_id} has checkpoint 0 but is not listed")
            state = self._truth(run_id)
            if state is None or not state.status.terminal:
                v.append(f"run {run_id} never finished ({state.status if state else 'unread'})")
            self._check_ledger(run_id)
            self._check_owners(run_id)

    def _check_ledger(self, run_id: str) -> None:
        events = load_events(RunStore(self.store).load(run_id).events)
        done = {e.key for e in events if isinstance(e, EffectResult) and e.ok}
        for key, n in self.world.applied.items():
            if key.startswith(f"{run_id}/") and n and key not in done:
                self.outcome.violations.append(f"effect {key} applied but not in the ledger")
        for key in done:
            if not self.world.applied[key]:
                self.outcome.violations.append(f"ledger says {key} applied; the tool disagrees")

    def _check_owners(self, run_id: str) -> None:
        """Every effect call was issued by the run's owner at that moment, and ownership
        moved only after the previous owner's lease had expired (or it was seen dead)."""
        writes = []
        for key, at in self.store.created:
            if key.startswith(f"runs/{run_id}/"):
                body = json.loads(open_sealed(self.store.objects[key], key=key, kind="checkpoint"))
                writes.append((at, body["owner"]))
        for (ta, a), (t, b) in itertools.pairwise(writes):
            if a != b:
                self.outcome.takeovers += 1
                # The same base under a new epoch is that owner restarted (Ray restarts an
                # orchestrator only once its process has died) or back after its lease
                # lapsed; another base must wait for the lease to end.
                if split_owner(a)[0] != split_owner(b)[0] and self._lease_held(a, ta, t):
                    self.outcome.violations.append(
                        f"run {run_id}: {b} took over at {t:.2f} while {a}'s lease held"
                    )
        for key, owner, at in self.world.issued:
            if key.startswith(f"{run_id}/"):
                before = [o for t, o in writes if t <= at]
                if before and before[-1] != owner:
                    self.outcome.violations.append(
                        f"run {run_id}: {owner} applied {key} at {at:.2f} but {before[-1]} "
                        "owned the run"
                    )

    def _lease_held(self, owner: str, since: float, until: float) -> bool:
        """Whether ``owner`` (``base@epoch``) held its lease without a gap from ``since`` to
        ``until`` (then nobody could have judged it gone in between)."""
        base, epoch = split_owner(owner)
        dead_at = self.visibly_dead.get(base)
        if dead_at is not None and dead_at <= until:
            return False
        spans = sorted(
            (r.renewed_at, r.expires_at)
            for r in self.store.leases
            if r.owner == base and r.epoch >= epoch
        )
        covered = since
        for start, end in spans:
            if start > covered:
                break
            covered = max(covered, end)
        return covered > until
