"""What a workflow is made of: nodes, edges, retry policies, what a node may know about its
run (``NodeContext``), what it may return (``NodeOutput``), and the inputs that name a host
path (``ConfinedPath``)."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from keel.core.calls import RecallRecord
from keel.core.tool import Tool
from keel.errors import InputError


class _Confined:
    """Marks an input that names a host path a tool will act on (see ``ConfinedPath``)."""

    def __repr__(self) -> str:
        return "CONFINED"


CONFINED = _Confined()
ConfinedPath = Annotated[str, CONFINED]
"""A run input naming a host path: it must lie under the deployment's tool roots
(``sandbox.roots``), checked where the run is created, once symbolic links and ``..`` are
resolved."""


def confine(path: str, roots: Sequence[str], field: str) -> str:
    """``path`` resolved, if it lies under one of ``roots``.

    Raises:
        InputError: naming ``field``, when it does not.
    """
    real = os.path.realpath(path)
    for root in roots:
        base = os.path.realpath(root)
        if real == base or real.startswith(base.rstrip(os.sep) + os.sep):
            return real
    raise InputError(
        f"{path!r} is outside the directories tools may act on ({', '.join(roots) or 'none'}; "
        "set sandbox.roots)",
        field=field,
    )


NodeFn = Callable[[Any, "NodeContext"], Any]
RouterFn = Callable[[Any], str]


class RetryPolicy(BaseModel):
    """How often a failing node is tried, and how long to wait between tries."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    attempts: int = Field(default=1, ge=1, le=100)
    backoff_s: float = Field(default=0.0, ge=0.0, le=3600.0)
    multiplier: float = Field(default=2.0, ge=1.0, le=10.0)
    max_backoff_s: float = Field(default=60.0, ge=0.0)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.backoff_s * self.multiplier ** (attempt - 1), self.max_backoff_s))


@runtime_checkable
class ToolSource(Protocol):
    """Tools found at run time (an MCP server's, say) rather than listed in code."""

    def tool_named(self, name: str) -> Tool | None: ...

    def names(self) -> list[str]: ...


class NodeContext(BaseModel):
    """What a node may know about the run besides its state."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    workflow: str
    node: str
    step: int
    attempt: int
    goal: str
    inputs: dict[str, JsonValue]
    principal: str = Field(default="", description="who started the run (its memory namespace)")
    env: dict[str, JsonValue] = Field(
        default_factory=dict, description="deployment settings (worker pools, storage)"
    )


class NodeOutput(BaseModel):
    """What a node that used workers returns: state updates, plus the model calls and
    retrievals its workers made (recorded in the ledger, for audit and replay) and which
    worker did the work."""

    model_config = ConfigDict(frozen=True)

    updates: dict[str, Any] = Field(default_factory=dict)
    calls: list[Any] = Field(default_factory=list, description="router.messages.ModelCall")
    recalls: list[RecallRecord] = Field(
        default_factory=list, description="retrievals the node made (recorded for replay)"
    )
    worker: str = ""
    handoff: str | None = Field(
        default=None, description="pause the run for a person after this node, saying why"
    )


class NoState(BaseModel):
    """The state model of a workflow that declares none."""

    model_config = ConfigDict(extra="allow")


@dataclass(frozen=True)
class Node:
    name: str
    fn: NodeFn
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_s: float | None = None
    inline: bool = False
    tool: Tool | None = None
    result_field: str | None = None
    role: str = ""
    on_reject: str | None = None
    rejections_field: str | None = None
    tools: dict[str, Tool] | ToolSource | None = None
    grace_s: float | None = None  # effects: how long past the timeout a late result counts
    bind: Mapping[str, str] = field(default_factory=dict)  # effects: argument -> run input

    @property
    def is_effect(self) -> bool:
        return self.tool is not None or self.tools is not None

    @property
    def is_async(self) -> bool:
        """An ``async def`` node runs on the orchestrator's event loop: it only awaits
        (workers, I/O), so it needs neither a Ray task nor a thread."""
        return inspect.iscoroutinefunction(self.fn)

    def tool_named(self, name: str) -> Tool | None:
        if self.tool is not None:
            return self.tool if self.tool.name == name else None
        if isinstance(self.tools, dict):
            return self.tools.get(name)
        return self.tools.tool_named(name) if self.tools is not None else None

    def tool_names(self) -> list[str]:
        if self.tool is not None:
            return [self.tool.name]
        if isinstance(self.tools, dict):
            return sorted(self.tools)
        return self.tools.names() if self.tools is not None else []

    @property
    def kind(self) -> str:
        if self.is_effect:
            return "effect"
        return "async" if self.is_async else "inline" if self.inline else "task"


@dataclass(frozen=True)
class Edge:
    target: str | None = None
    router: RouterFn | None = None
    targets: tuple[str, ...] = ()
