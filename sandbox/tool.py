"""What a tool author implements: apply an effect, and say afterwards whether it happened.

``verify`` is what makes resume safe: when the orchestrator crashed between recording an
intent and recording its result, it asks the tool instead of running the effect again.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, JsonValue


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


def tool_schema(tool: Any) -> dict[str, Any] | None:
    """The JSON Schema of a tool's arguments, from its pydantic ``args_model``."""
    model = getattr(tool, "args_model", None)
    if model is not None:
        schema: dict[str, Any] = model.model_json_schema()
        return schema
    parameters = getattr(tool, "parameters", None)  # a JSON Schema given as is (MCP tools)
    return dict(parameters) if isinstance(parameters, dict) else None
