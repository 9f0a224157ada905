"""Where a node finds its workers: one pool per role, sized by configuration.

The sizes and the storage the retriever reads travel in ``NodeContext.env``, so a node
running as a Ray task anywhere in the cluster reaches the same named replicas.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from keel.actors.executor import ExecutorWorker
from keel.actors.planner import PlannerWorker
from keel.actors.pool import WorkerPool
from keel.actors.replay import RECORDED, ReplayPool
from keel.actors.retriever import RetrieverWorker
from keel.actors.validator import ValidatorWorker
from keel.errors import InputError

ROLES = ("planner", "retriever", "executor", "validator")
_POOLS: dict[tuple[str, int, str], WorkerPool] = {}


def pool(role: str, env: Mapping[str, Any]) -> Any:
    """The pool of ``role`` (created on first use in this process); during a replay, a
    stand-in that answers from the ledger and calls nothing."""

    if RECORDED.get() is not None:
        return ReplayPool(role)
    if role not in ROLES:
        raise InputError(f"unknown worker role {role!r}; one of {ROLES}", field="role")
    size = int((env.get("workers") or {}).get(role, 1))
    # Replicas are built with their settings (the retriever's storage, the executor's
    # policy, the planner's router): deployments that differ get pools of their own.
    cls, args = _spec(role, env)
    scope = hashlib.sha256(json.dumps(args, sort_keys=True, default=str).encode()).hexdigest()[:8]
    key = (role, size, scope)
    if key not in _POOLS:
        _POOLS[key] = WorkerPool(role, cls, args, size=size, scope=scope)
    return _POOLS[key]


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
