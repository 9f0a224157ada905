"""Keel: a production runtime for LLM agents that take real actions.

The public API is what this module exports. Names load lazily, so ``import keel`` (and the
CLI's ``--help``) stays fast and does not import Ray.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Keel": "keel.client",
    "KeelConfig": "keel.config",
    "load_config": "keel.config",
    "Budgets": "keel.config",
    "Workflow": "keel.core.workflow",
    "END": "keel.core.workflow",
    "NodeContext": "keel.core.nodes",
    "NodeOutput": "keel.core.nodes",
    "RetryPolicy": "keel.core.nodes",
    "ConfinedPath": "keel.core.nodes",
    "RunState": "keel.core.state",
    "RunSummary": "keel.core.state",
    "append": "keel.core.state",
    "merge": "keel.core.state",
    "add": "keel.core.state",
    "replace": "keel.core.state",
    "RunStatus": "keel.core.events",
    "Event": "keel.core.events",
    "Approval": "keel.core.events",
    "Tool": "keel.core.tool",
    "Verification": "keel.core.tool",
    "ToolAction": "keel.core.tool",
    "FieldError": "keel.core.validation",
    "KeelError": "keel.errors",
    "ErrorKind": "keel.errors",
    "ErrorCode": "keel.errors",
    "InputError": "keel.errors",
    "ConfigError": "keel.errors",
    "WorkflowError": "keel.errors",
    "RunNotFoundError": "keel.errors",
    "RunStateError": "keel.errors",
    "ConflictError": "keel.errors",
    "PolicyError": "keel.errors",
    "StorageError": "keel.errors",
    "SandboxError": "keel.errors",
}

__all__ = [
    "END",
    "Approval",
    "Budgets",
    "ConfigError",
    "ConfinedPath",
    "ConflictError",
    "ErrorCode",
    "ErrorKind",
    "Event",
    "FieldError",
    "InputError",
    "Keel",
    "KeelConfig",
    "KeelError",
    "NodeContext",
    "NodeOutput",
    "PolicyError",
    "RetryPolicy",
    "RunNotFoundError",
    "RunState",
    "RunStateError",
    "RunStatus",
    "RunSummary",
    "SandboxError",
    "StorageError",
    "Tool",
    "ToolAction",
    "Verification",
    "Workflow",
    "WorkflowError",
    "add",
    "append",
    "load_config",
    "merge",
    "replace",
]

if TYPE_CHECKING:
    from keel.client import Keel
    from keel.config import Budgets, KeelConfig, load_config
    from keel.core.events import Approval, Event, RunStatus
    from keel.core.nodes import ConfinedPath, NodeContext, NodeOutput, RetryPolicy
    from keel.core.state import RunState, RunSummary, add, append, merge, replace
    from keel.core.tool import Tool, ToolAction, Verification
    from keel.core.validation import FieldError
    from keel.core.workflow import END, Workflow
    from keel.errors import (
        ConfigError,
        ConflictError,
        ErrorCode,
        ErrorKind,
        InputError,
        KeelError,
        PolicyError,
        RunNotFoundError,
        RunStateError,
        SandboxError,
        StorageError,
        WorkflowError,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'keel' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
