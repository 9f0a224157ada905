"""Ray's exceptions, translated in one place into what Keel's callers act on.

Three things can go wrong calling into Ray, and each means something different to a run:

- the callee raised (``RayTaskError``): its own exception is what counts, unwrapped;
- the actor is gone or restarting (``LOST``): safe to call again *unless* the call was an
  effect that may have happened, which the caller must settle (``WorkerLostError``);
- the task's worker or node died (``TASK_LOST``): a plain node may run again
  (``NodeError``, retryable).
"""

from __future__ import annotations

from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    NodeDiedError,
    ObjectLostError,
    RayActorError,
    RayTaskError,
    TaskCancelledError,
    WorkerCrashedError,
)

from keel.errors import NodeError

LOST: tuple[type[Exception], ...] = (ActorDiedError, ActorUnavailableError, RayActorError)
TASK_LOST: tuple[type[Exception], ...] = (
    WorkerCrashedError,
    TaskCancelledError,
    NodeDiedError,
    ObjectLostError,
)


def unwrap(exc: RayTaskError) -> Exception:
    """The exception the remote code raised, as its own type (a KeelError stays one)."""
    cause = exc.cause
    return cause if isinstance(cause, Exception) else exc


def task_lost(what: str, exc: Exception) -> NodeError:
    return NodeError(f"{what}: worker lost ({type(exc).__name__})", retryable=True)


__all__ = ["LOST", "TASK_LOST", "RayTaskError", "task_lost", "unwrap"]
