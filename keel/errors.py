"""One error hierarchy for every Keel package, classed by who must act.

Errors cross Ray actor boundaries, so each one pickles with its code, field and context
intact; callers branch on ``code`` (stable) rather than on message text. Each class belongs
to one ``ErrorKind`` that says who must act (the caller fixes its input, looks again,
asks someone with the right, waits and retries, or reports a bug), and ``OUTCOMES`` maps
each kind, in this one place, to the CLI's exit code and the API's HTTP status.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError


class ErrorKind(StrEnum):
    """Who must act on an error."""

    USAGE = "usage"  # the caller: fix the input, the configuration or the workflow
    NOT_FOUND = "not_found"  # the caller: it names something that does not exist
    CONFLICT = "conflict"  # the caller: the thing changed under it; look again
    FORBIDDEN = "forbidden"  # someone with the right to do it
    TRANSIENT = "transient"  # nobody: try again later
    INTERNAL = "internal"  # Keel's maintainers: a bug or a broken invariant


# (CLI exit code, HTTP status) for each kind. Exit 1 is kept for "the run did not succeed".
OUTCOMES: dict[ErrorKind, tuple[int, int]] = {
    ErrorKind.USAGE: (2, 400),
    ErrorKind.NOT_FOUND: (2, 404),
    ErrorKind.FORBIDDEN: (3, 403),
    ErrorKind.CONFLICT: (4, 409),
    ErrorKind.TRANSIENT: (5, 503),
    ErrorKind.INTERNAL: (70, 500),
}


def exit_code(exc: KeelError) -> int:
    """The CLI's exit code for an error (see ``OUTCOMES``)."""
    return OUTCOMES[exc.kind][0]


def http_status(exc: KeelError) -> int:
    """The API's HTTP status for an error (see ``OUTCOMES``)."""
    return OUTCOMES[exc.kind][1]


class ErrorCode(StrEnum):
    """Stable, documented error codes. Never renumber or reuse a value."""

    INVALID_INPUT = "invalid_input"
    INVALID_CONFIG = "invalid_config"
    WORKFLOW_NOT_FOUND = "workflow_not_found"
    WORKFLOW_INVALID = "workflow_invalid"
    RUN_NOT_FOUND = "run_not_found"
    RUN_STATE = "run_state"
    NODE_FAILED = "node_failed"
    NODE_TIMEOUT = "node_timeout"
    STORAGE = "storage"
    OBJECT_NOT_FOUND = "object_not_found"
    CORRUPT_OBJECT = "corrupt_object"
    SCHEMA_UNSUPPORTED = "schema_unsupported"
    EFFECT = "effect"
    SANDBOX = "sandbox"
    POLICY = "policy"
    ROUTER = "router"
    WORKER_LOST = "worker_lost"
    OBJECT_EXISTS = "object_exists"
    CONFLICT = "conflict"
    RUN_OWNED = "run_owned"
    MEMORY_NOT_FOUND = "memory_not_found"


class KeelError(Exception):
    """Root of every error Keel raises on purpose.

    Attributes:
        code: a stable machine-readable code.
        retryable: whether trying the same thing again may succeed.
        field: the input field at fault, for errors about bad input.
        context: extra JSON-safe detail (object names, run ids, ...).
    """

    default_code: ErrorCode = ErrorCode.NODE_FAILED
    default_retryable: bool = False
    kind: ErrorKind = ErrorKind.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | None = None,
        retryable: bool | None = None,
        field: str | None = None,
        **context: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.retryable = self.default_retryable if retryable is None else retryable
        self.field = field
        self.context = context

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild,
            (type(self), self.message, self.code, self.retryable, self.field, self.context),
        )

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe description, as stored in the ledger and returned by the API."""
        out: dict[str, Any] = {
            "type": type(self).__name__,
            "code": str(self.code),
            "message": self.message,
            "retryable": self.retryable,
        }
        if self.field:
            out["field"] = self.field
        if self.context:
            out["context"] = {k: _jsonable(v) for k, v in self.context.items()}
        return out


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _rebuild(
    cls: type[KeelError],
    message: str,
    code: ErrorCode,
    retryable: bool,
    field: str | None,
    context: dict[str, Any],
) -> KeelError:
    err = cls.__new__(cls)
    KeelError.__init__(err, message, code=code, retryable=retryable, field=field, **context)
    return err


class InputError(KeelError):
    """Bad input from a user or client: names the field and the reason."""

    kind = ErrorKind.USAGE

    default_code = ErrorCode.INVALID_INPUT


class ConfigError(InputError):
    """Configuration that cannot be used."""

    kind = ErrorKind.USAGE

    default_code = ErrorCode.INVALID_CONFIG


class WorkflowError(KeelError):
    """A workflow definition that cannot run, or a workflow that cannot be found."""

    kind = ErrorKind.USAGE

    default_code = ErrorCode.WORKFLOW_INVALID


class RunNotFoundError(InputError):
    """No run with that id exists in the configured store."""

    kind = ErrorKind.NOT_FOUND

    default_code = ErrorCode.RUN_NOT_FOUND


class MemoryNotFoundError(InputError):
    """No memory item with that id, kind and namespace."""

    kind = ErrorKind.NOT_FOUND

    default_code = ErrorCode.MEMORY_NOT_FOUND


class RunStateError(KeelError):
    """The run is not in a state that allows the requested operation."""

    kind = ErrorKind.CONFLICT

    default_code = ErrorCode.RUN_STATE


class ConflictError(KeelError):
    """The operation lost a race with another writer, or the target is held by someone else:
    reload and look again before acting."""

    kind = ErrorKind.CONFLICT

    default_code = ErrorCode.CONFLICT


class RunOwnedError(ConflictError):
    """Another live Keel instance drives this run; only it may write the run."""

    default_code = ErrorCode.RUN_OWNED


class NodeError(KeelError):
    """A node failed; ``retryable`` decides whether its retry policy applies."""

    kind = ErrorKind.TRANSIENT

    default_code = ErrorCode.NODE_FAILED
    default_retryable = True


class EffectError(KeelError):
    """A side effect could not be applied or reconciled."""

    default_code = ErrorCode.EFFECT


class WorkerLostError(EffectError):
    """The executor running an effect was lost mid-call (its process or node died): whether
    the effect happened is unknown until the tool's ``verify`` says."""

    kind = ErrorKind.TRANSIENT

    default_code = ErrorCode.WORKER_LOST
    default_retryable = True


class StorageError(KeelError):
    """The checkpoint store failed; transient failures are retryable."""

    kind = ErrorKind.TRANSIENT

    default_code = ErrorCode.STORAGE
    default_retryable = True


class ObjectNotFoundError(StorageError):
    """The object does not exist in the store."""

    kind = ErrorKind.NOT_FOUND

    default_code = ErrorCode.OBJECT_NOT_FOUND
    default_retryable = False


class ObjectExistsError(StorageError):
    """A create-if-absent write found the object already there: another writer got it
    first. For checkpoints this is the fence that keeps one driver per run."""

    kind = ErrorKind.CONFLICT

    default_code = ErrorCode.OBJECT_EXISTS
    default_retryable = False


class CorruptObjectError(StorageError):
    """An object failed its checksum or could not be parsed: never load it."""

    kind = ErrorKind.INTERNAL

    default_code = ErrorCode.CORRUPT_OBJECT
    default_retryable = False


class SchemaVersionError(StorageError):
    """An object was written in a format this version of Keel cannot read."""

    kind = ErrorKind.USAGE

    default_code = ErrorCode.SCHEMA_UNSUPPORTED
    default_retryable = False


class SandboxError(KeelError):
    """Root of sandbox failures (isolation unavailable, limits hit)."""

    default_code = ErrorCode.SANDBOX


class PolicyError(KeelError):
    """Root of policy failures (denials are decisions, not errors)."""

    kind = ErrorKind.FORBIDDEN

    default_code = ErrorCode.POLICY


class RouterError(KeelError):
    """Root of model router failures."""

    kind = ErrorKind.TRANSIENT

    default_code = ErrorCode.ROUTER


def first_error(exc: ValidationError, prefix: str = "", default: str = "") -> tuple[str, str]:
    """The field path (``prefix.a.b``) and message of a pydantic error's first problem: what
    every "bad input names its field" message is made of."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    field = ".".join(part for part in (prefix, loc) if part) or default or prefix
    return field, str(err["msg"])
