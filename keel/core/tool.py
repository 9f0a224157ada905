"""What a tool author implements: apply an effect, and say afterwards whether it happened.

``verify`` is what makes resume safe: when the orchestrator crashed between recording an
intent and recording its result, it asks the tool instead of running the effect again.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, JsonValue, ValidationInfo


class Verification(BaseModel):
    """The tool's answer to "did the effect with this idempotency key happen?"."""

    model_config = ConfigDict(frozen=True)

    status: Literal["applied", "not_applied", "unknown"]
    result: JsonValue = None
    detail: str = ""


@runtime_checkable
class Tool(Protocol):
    """A side-effecting capability. ``key`` is unique per run, step, node and attempt;
    tools that can should use it to make ``apply`` idempotent too."""

    name: str

    def apply(self, args: dict[str, Any], key: str) -> JsonValue:
        """Perform the effect and return a JSON-safe result."""
        ...

    def verify(self, args: dict[str, Any], key: str) -> Verification:
        """Report whether the effect for ``key`` happened, without performing it."""
        ...


ToolAction = Literal["read", "write"]


def tool_action(tool: Any) -> ToolAction:
    """What a tool does to the world, for policy: ``read`` or ``write`` (the default)."""
    action = getattr(tool, "action", "write")
    return "read" if action == "read" else "write"


_RESOURCE = re.compile(r"[^a-z0-9._-]")


def tool_resource(tool: Any, args: dict[str, Any]) -> str | None:
    """The resource a call acts on, from the arguments the tool names in ``resource_args``
    (each bound from the run's inputs, never chosen by a proposal): lower case, with
    anything but letters, digits, ``.``, ``_`` and ``-`` replaced."""
    names = getattr(tool, "resource_args", ()) or ()
    if not names:
        return None
    parts = [_RESOURCE.sub("_", str(args.get(n, "")).strip().lower())[:64] for n in names]
    return "/".join(parts)


def tool_object(tool: Any, args: dict[str, Any]) -> str:
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


def tool_schema(tool: Any) -> dict[str, Any] | None:
    """The JSON Schema of a tool's arguments, from its pydantic ``args_model``."""
    model = getattr(tool, "args_model", None)
    if model is not None:
        schema: dict[str, Any] = model.model_json_schema()
        return schema
    parameters = getattr(tool, "parameters", None)  # a JSON Schema given as is (MCP tools)
    return dict(parameters) if isinstance(parameters, dict) else None
