"""Where a node finds its workers: one pool per role, sized by configuration, and typed
handles on them (``workers(ctx).planner.plan(PlanRequest(...)) -> PlanResponse``; an
``async def`` node awaits the same calls, ``aplan``, ``aclassify``, ..., on the
orchestrator's event loop).

The sizes and the storage the retriever reads travel in ``NodeContext.env``, so a node
running as a Ray task anywhere in the cluster reaches the same named replicas.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, TypeVar

from keel.actors.executor import ExecutorWorker
from keel.actors.planner import PlannerWorker
from keel.actors.pool import WorkerPool, worker_name
from keel.actors.replay import RECORDED, ReplayPool
from keel.actors.retriever import RetrieverWorker
from keel.actors.validator import ValidatorWorker
from keel.actors.worker_messages import (
    ActRequest,
    ActResponse,
    ClassifyRequest,
    ClassifyResponse,
    PlanRequest,
    PlanResponse,
    RetrieveRequest,
    RetrieveResponse,
    ValidateRequest,
    ValidateResponse,
)
from keel.core.nodes import NodeContext
from keel.errors import InputError, PolicyError
from keel.runtime.tracing import run_traceparent
from keel.storage.memory import SHARED

ROLES = ("planner", "retriever", "executor", "validator")
_POOLS: dict[tuple[str, int, str], WorkerPool] = {}
_BY_ENV: dict[tuple[int, str], tuple[Mapping[str, Any], WorkerPool]] = {}
_R = TypeVar("_R")


def pool(role: str, env: Mapping[str, Any]) -> Any:
    """The pool of ``role`` (created on first use in this process); during a replay, a
    stand-in that answers from the ledger and calls nothing."""

    if RECORDED.get() is not None:
        return ReplayPool(role)
    seen = _BY_ENV.get((id(env), role))
    if seen is not None and seen[0] is env:  # the same settings object: the same pool
        return seen[1]
    if role not in ROLES:
        raise InputError(f"unknown worker role {role!r}; one of {ROLES}", field="role")
    size = int((env.get("workers") or {}).get(role, 1))
    # Replicas are built with their settings (the retriever's storage, the executor's
    # policy, the planner's router): deployments that differ get pools of their own.
    cls, args = _spec(role, env)
    key = (role, size, _scope(args))
    if key not in _POOLS:
        _POOLS[key] = WorkerPool(role, cls, args, size=size, scope=key[2])
    # An orchestrator passes one settings object to every node it runs: remembered by
    # identity, the digest of its settings is not taken again on every worker call.
    _BY_ENV[(id(env), role)] = (env, _POOLS[key])
    while len(_BY_ENV) > 32:
        _BY_ENV.pop(next(iter(_BY_ENV)))
    return _POOLS[key]


def _scope(args: tuple[Any, ...]) -> str:
    return hashlib.sha256(json.dumps(args, sort_keys=True, default=str).encode()).hexdigest()[:8]


def worker_names(env: Mapping[str, Any], roles: tuple[str, ...]) -> list[str]:
    """The named actors that serve a deployment's ``roles``, for whoever stops a
    deployment on a shared cluster: they are detached, so they outlive its orchestrator.
    A pool is named by what its replicas are built with, so deployments that share a
    router share planners (and all share validators): stop those roles only when none
    is left."""
    names = []
    for role in roles:
        size = int((env.get("workers") or {}).get(role, 1))
        scope = _scope(_spec(role, env)[1])
        names += [worker_name(role, i, scope) for i in range(size)]
    return names


def _spec(role: str, env: Mapping[str, Any]) -> tuple[Any, tuple[Any, ...]]:
    if role == "planner":
        return PlannerWorker, (env.get("router"),)
    if role == "retriever":
        return RetrieverWorker, (env["storage_url"], dict(env.get("storage_options") or {}))
    if role == "executor":
        return ExecutorWorker, (
            env.get("policy_model"),
            env.get("policy_file"),
            list(env.get("tool_roots") or []),
            env.get("storage_url"),
            dict(env.get("storage_options") or {}),
        )

    return ValidatorWorker, ()


class Planner:
    """The planner role as a node sees it: a request model in, a response model out."""

    def __init__(self, env: Mapping[str, Any], traceparent: str | None = None) -> None:
        self._pool = pool("planner", env)
        self._trace = {"traceparent": traceparent} if traceparent else {}

    def plan(self, req: PlanRequest) -> PlanResponse:
        req = req.model_copy(update=self._trace)
        return _expect(PlanResponse, self._pool.call_sync("plan", req))

    async def aplan(self, req: PlanRequest) -> PlanResponse:
        req = req.model_copy(update=self._trace)
        return _expect(PlanResponse, await self._pool.call("plan", req))

    def classify(self, req: ClassifyRequest) -> ClassifyResponse:
        req = req.model_copy(update=self._trace)
        return _expect(ClassifyResponse, self._pool.call_sync("classify", req))

    async def aclassify(self, req: ClassifyRequest) -> ClassifyResponse:
        req = req.model_copy(update=self._trace)
        return _expect(ClassifyResponse, await self._pool.call("classify", req))

    def act(self, req: ActRequest) -> ActResponse:
        req = req.model_copy(update=self._trace)
        return _expect(ActResponse, self._pool.call_sync("act", req))

    async def aact(self, req: ActRequest) -> ActResponse:
        req = req.model_copy(update=self._trace)
        return _expect(ActResponse, await self._pool.call("act", req))


class Retriever:
    """The retriever role: ranked items from the deployment's memory, in the shared
    namespace or the run's principal's own, never another tenant's."""

    def __init__(self, env: Mapping[str, Any], principal: str = "") -> None:
        self._pool = pool("retriever", env)
        self._principal = principal

    def retrieve(self, req: RetrieveRequest) -> RetrieveResponse:
        self._check(req)
        return _expect(RetrieveResponse, self._pool.call_sync("retrieve", req))

    async def aretrieve(self, req: RetrieveRequest) -> RetrieveResponse:
        self._check(req)
        return _expect(RetrieveResponse, await self._pool.call("retrieve", req))

    def _check(self, req: RetrieveRequest) -> None:
        if req.namespace not in (SHARED, self._principal):
            raise PolicyError(
                f"a run of {self._principal or 'no principal'} may not read memory in "
                f"namespace {req.namespace!r}",
                field="namespace",
            )


class Validator:
    """The validator role: a raw proposal checked against the tools' schemas."""

    def __init__(self, env: Mapping[str, Any]) -> None:
        self._pool = pool("validator", env)

    def validate(self, req: ValidateRequest) -> ValidateResponse:
        return _expect(ValidateResponse, self._pool.call_sync("validate", req))

    async def avalidate(self, req: ValidateRequest) -> ValidateResponse:
        return _expect(ValidateResponse, await self._pool.call("validate", req))


class Workers:
    """The roles a node may call, typed. The executor is not among them: a node proposes,
    and only the runner applies an effect (through the policy and the sandbox)."""

    def __init__(
        self, env: Mapping[str, Any], traceparent: str | None = None, principal: str = ""
    ) -> None:
        self._env = env
        self._traceparent = traceparent
        self._principal = principal

    @property
    def planner(self) -> Planner:
        return Planner(self._env, self._traceparent)

    @property
    def retriever(self) -> Retriever:
        return Retriever(self._env, self._principal)

    @property
    def validator(self) -> Validator:
        return Validator(self._env)


def workers(ctx: NodeContext) -> Workers:
    """The worker roles of the deployment running ``ctx``'s node (or, during a replay,
    stand-ins answering from the ledger). Model calls carry the run's trace context."""
    return Workers(ctx.env, run_traceparent(ctx.run_id) if ctx.run_id else None, ctx.principal)


def _expect(cls: type[_R], value: object) -> _R:
    if not isinstance(value, cls):
        raise TypeError(f"a worker answered {type(value).__name__}, not {cls.__name__}")
    return value
