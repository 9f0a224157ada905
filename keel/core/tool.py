"""What a tool author implements: apply an effect, and say afterwards whether it happened.

``verify`` is what makes resume safe: when the orchestrator crashed between recording an
intent and recording its result, it asks the tool instead of running the effect again.
"""

from __future__ import annotations

import copy
import functools
import os
import re
from abc import ABC, abstractmethod
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, JsonValue, ValidationInfo


class Verification(BaseModel):
    """The tool's answer to "did the effect with this idempotency key happen?"."""

    model_config = ConfigDict(frozen=True)

    status: Literal["applied", "not_applied", "unknown"]
    result: JsonValue = None
    detail: str = ""


ToolAction = Literal["read", "write"]


class Tool(ABC):
    """A capability with an effect on the world. ``key`` is unique per run, step, node and
    attempt; tools that can should use it to make ``apply`` idempotent too.

    What the engine, policy and the model need to know is declared here, not discovered:
    ``action`` decides whether a call needs approval, ``args_model`` (or a JSON Schema in
    ``parameters``, for tools defined elsewhere such as MCP) is what a proposal is checked
    against, and ``resource_args`` name the arguments, bound from the run's inputs, that
    policy decides on. A workflow refuses a tool that declares none of the schemas.
    """

    name: str = ""
    description: str = ""
    action: ToolAction  # declared by every tool: nothing is a write by accident, or a read
    args_model: type[BaseModel] | None = None
    parameters: dict[str, Any] | None = None
    resource_args: tuple[str, ...] = ()

    @abstractmethod
    def apply(self, args: dict[str, Any], key: str) -> JsonValue:
        """Perform the effect and return a JSON-safe result."""

    @abstractmethod
    def verify(self, args: dict[str, Any], key: str) -> Verification:
        """Report whether the effect for ``key`` happened, without performing it."""

    def preview(self, args: dict[str, Any]) -> str:
        """What ``apply`` would change, in words, for the person asked to approve it: it
        is recorded with the approval request, so the ledger keeps what they were shown.
        It must not act; empty where the tool cannot say."""
        return ""


def check_tool(tool: object) -> Tool:
    """A tool as a workflow accepts it, or a ``TypeError`` that names it and what is
    missing: checked when the workflow is defined, so a bad tool never reaches a run."""
    label = getattr(tool, "name", None) or type(tool).__name__
    if not isinstance(tool, Tool):
        raise TypeError(f"tool {label!r}: a tool subclasses keel.Tool (got {type(tool).__name__})")
    if not tool.name or not isinstance(tool.name, str):
        raise TypeError(f"tool of class {type(tool).__name__}: name: a tool needs a name")
    action = getattr(tool, "action", None)
    if action not in ("read", "write"):
        raise TypeError(
            f"tool {label!r}: action: declare action = 'read' or 'write' on the tool "
            f"(got {action!r}); a write waits for approval unless policy exempts it"
        )
    model = tool.args_model
    if model is None and not isinstance(tool.parameters, dict):
        raise TypeError(
            f"tool {label!r}: args_model: a tool declares its arguments (a pydantic model, "
            "or a JSON Schema in parameters)"
        )
    if model is not None and not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TypeError(f"tool {label!r}: args_model: must be a pydantic model class")
    return tool


def tool_action(tool: Tool) -> ToolAction:
    """What a tool does to the world, for policy: anything but ``read`` counts as a write."""
    return "read" if tool.action == "read" else "write"


_RESOURCE = re.compile(r"[^a-z0-9._-]")


def tool_resource(tool: Tool, args: dict[str, Any]) -> str | None:
    """The resource a call acts on, from the arguments the tool names in ``resource_args``
    (each bound from the run's inputs, never chosen by a proposal): lower case, with
    anything but letters, digits, ``.``, ``_`` and ``-`` replaced."""
    names = tool.resource_args
    if not names:
        return None
    parts = [_RESOURCE.sub("_", str(args.get(n, "")).strip().lower())[:64] for n in names]
    return "/".join(parts)


def preview(tool: Tool, args: dict[str, Any]) -> str:
    """A tool's own preview of a call, bounded; a preview that fails says so rather than
    stopping the request for approval (the arguments are shown either way)."""
    try:
        said = tool.preview(args)
    except Exception as exc:  # the tool's code: whatever it raises, the approval goes on
        return f"(the tool could not say: {type(exc).__name__}: {exc})"[:2_000]
    return str(said or "")[:2_000]


def tool_object(tool: Tool, args: dict[str, Any]) -> str:
    """What policy is asked about: ``tool:NAME``, or ``tool:NAME:RESOURCE``."""
    resource = tool_resource(tool, args)
    return f"tool:{tool.name}" + (f":{resource}" if resource else "")


def confined(path: str, info: ValidationInfo) -> str:
    """A path argument's validator: with tool roots in the validation context (the engine
    and the executor give them), the path must resolve to a place under one of them."""
    roots = (info.context or {}).get("roots")
    if roots is None:
        return path
    real = os.path.realpath(path)
    for root in roots:
        base = os.path.realpath(root)
        if real == base or real.startswith(base.rstrip(os.sep) + os.sep):
            return path
    raise ValueError(f"{path!r} is outside the directories tools may act on")


@functools.cache
def _model_schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


def tool_schema(tool: Tool) -> dict[str, Any] | None:
    """The JSON Schema of a tool's arguments: its ``args_model``'s, or ``parameters``.
    Every effect step asks for it, and pydantic builds it anew each time (about 3% of the
    orchestrator's time in ``bench.cost_breakdown``): it is made once per model, and each
    caller gets its own copy to change."""
    if tool.args_model is not None:
        return copy.deepcopy(_model_schema(tool.args_model))
    return dict(tool.parameters) if isinstance(tool.parameters, dict) else None
