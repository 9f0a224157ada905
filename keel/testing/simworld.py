"""The simulated world the engine runs in: a store, a tool with its own counter, executors.

The tool counts every application that really lands, whatever the ledger says; the
simulation's invariants are checked against these counters (what the outside world saw),
never against what the engine believes.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, JsonValue

from keel.core.nodes import Node, NodeContext
from keel.core.tool import Tool, Verification
from keel.errors import ObjectExistsError, ObjectNotFoundError, StorageError, WorkerLostError
from keel.storage.base import check_key
from keel.storage.envelope import open_sealed
from keel.storage.leases import PREFIX, OwnerRecord


@dataclass
class Faults:
    """How often each kind of trouble happens (probabilities per operation)."""

    storage_fail: float = 0.03
    storage_ambiguous: float = 0.01
    apply_slow: float = 0.1
    apply_stuck: float = 0.02
    lost_before: float = 0.03
    lost_after: float = 0.03
    tool_error: float = 0.02
    verify_unknown: float = 0.05

    def off(self) -> Faults:
        return Faults(*(0.0 for _ in range(8)))


@dataclass
class Landing:
    key: str
    owner: str
    at: float


class World:
    """The outside world: one non-idempotent tool whose counter is the truth."""

    def __init__(self, rng: random.Random, faults: Faults) -> None:
        self.rng = rng
        self.faults = faults
        self.applied: Counter[str] = Counter()
        self.landings: list[Landing] = []
        self.issued: list[tuple[str, str, float]] = []  # (key, owner, time) of every apply call

    def land(self, key: str, owner: str) -> int:
        self.applied[key] += 1
        self.landings.append(Landing(key, owner, asyncio.get_running_loop().time()))
        return self.applied[key]


class SimTool(Tool):
    """A write tool known by name; the simulated executor decides what applying it does."""

    action = "write"
    parameters = {"type": "object"}

    def __init__(self, name: str) -> None:
        self.name = name

    def apply(self, args: dict[str, Any], key: str) -> JsonValue:  # pragma: no cover
        raise AssertionError("the simulated executor applies tools")

    def verify(self, args: dict[str, Any], key: str) -> Verification:  # pragma: no cover
        raise AssertionError("the simulated executor verifies tools")


class SimStore:
    """An in-memory object store with S3's semantics and injected failures: a write can
    fail before it happens, or happen and still report failure (an ambiguous write)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.objects: dict[str, bytes] = {}
        self.created: list[tuple[str, float]] = []  # (key, time) of every create that landed
        self.leases: list[OwnerRecord] = []  # every lease record that landed
        self.faulty = True

    @property
    def url(self) -> str:
        return "sim://"

    def _fail(self, what: str, key: str) -> None:
        if self.faulty and self.world.rng.random() < self.world.faults.storage_fail:
            raise StorageError(f"simulated failure to {what} {key}", key=key)

    def _ambiguous(self, key: str) -> None:
        if self.faulty and self.world.rng.random() < self.world.faults.storage_ambiguous:
            raise StorageError(f"simulated lost reply after writing {key}", key=key)

    def put(self, key: str, data: bytes) -> None:
        self._fail("write", check_key(key))
        self.objects[key] = data
        if key.startswith(f"{PREFIX}/"):
            raw = open_sealed(data, key=key, kind="owner")
            self.leases.append(OwnerRecord.model_validate(json.loads(raw)))
        self._ambiguous(key)

    def create(self, key: str, data: bytes) -> None:
        self._fail("create", check_key(key))
        if key in self.objects:
            raise ObjectExistsError(f"object {key} already exists", key=key)
        self.objects[key] = data
        self.created.append((key, asyncio.get_running_loop().time()))
        self._ambiguous(key)

    def get(self, key: str) -> bytes:
        self._fail("read", key)
        try:
            return self.objects[key]
        except KeyError:
            raise ObjectNotFoundError(f"no object {key}", key=key) from None

    def list(self, prefix: str) -> list[str]:
        self._fail("list", prefix)
        base = prefix.rstrip("/") + "/"
        return sorted(k for k in self.objects if k.startswith(base))

    def delete(self, key: str) -> None:
        self._fail("delete", key)
        self.objects.pop(key, None)


@dataclass
class Process:
    """One Keel process: its owner name, its executors' in-flight calls, and whether it is
    frozen (its storage calls wait) or dead (its executors' calls never land)."""

    owner: str
    frozen_until: float = 0.0
    dead: bool = False
    inflight: set[str] = field(default_factory=set)
    died: asyncio.Event = field(default_factory=asyncio.Event)

    def kill(self) -> None:
        self.dead = True
        self.inflight.clear()
        self.died.set()


class SimRunner:
    """Nodes run inline; tools run on this process's simulated executor, which may be
    slow, get stuck, be lost before or after applying, or fail."""

    def __init__(self, world: World, process: Process, timeout_s: float, grace_s: float) -> None:
        self.world = world
        self.process = process
        self.timeout_s = timeout_s
        self.grace_s = grace_s
        self.name: Callable[[], str] = lambda: process.owner  # the engine's owner name now

    async def run_node(self, node: Node, state: BaseModel, ctx: NodeContext) -> Any:
        await asyncio.sleep(self.world.rng.choice((0.0, 0.0, 0.01, 0.05)))
        return node.fn(state, ctx)

    async def apply_effect(
        self,
        tool: Any,
        args: dict[str, Any],
        key: str,
        *,
        site: Any = None,
    ) -> JsonValue:
        rng, faults, proc = self.world.rng, self.world.faults, self.process
        loop = asyncio.get_running_loop()
        self.world.issued.append((key, self.name(), loop.time()))
        proc.inflight.add(key)
        try:
            roll = rng.random()
            if roll < faults.apply_stuck:
                await proc.died.wait()  # hangs until its process dies, and never lands
                raise WorkerLostError("executor died")
            if roll < faults.apply_stuck + faults.apply_slow:
                late = self.timeout_s + rng.uniform(0.0, self.grace_s * 0.9)
                await asyncio.sleep(late)  # past the timeout, within the grace period
            else:
                await asyncio.sleep(rng.uniform(0.0, self.timeout_s * 0.5))
            if proc.dead:
                raise WorkerLostError("executor died")
            if rng.random() < faults.lost_before:
                raise WorkerLostError("executor lost before applying")
            if rng.random() < faults.tool_error:
                raise ConnectionError("the tool refused the call")
            count = self.world.land(key, proc.owner)
            if rng.random() < faults.lost_after:
                raise WorkerLostError("executor lost after applying")
            return {"count": count}
        finally:
            proc.inflight.discard(key)

    async def verify_effect(
        self, tool: Any, args: dict[str, Any], key: str, *, site: Any = None
    ) -> Verification:
        await asyncio.sleep(self.world.rng.choice((0.0, 0.01)))
        if self.world.rng.random() < self.world.faults.verify_unknown:
            return Verification(status="unknown", detail="the tool could not tell")
        n = self.world.applied[key]
        if n:
            return Verification(status="applied", result={"count": n})
        return Verification(status="not_applied")

    async def effect_running(self, key: str) -> bool:
        return not self.process.dead and key in self.process.inflight
