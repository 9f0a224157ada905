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
    "Workflow": "actors.workflow",
    "NodeContext": "actors.workflow",
    "RetryPolicy": "actors.workflow",
    "END": "actors.workflow",
    "RunState": "actors.state",
    "RunStatus": "actors.state",
    "append": "actors.state",
    "merge": "actors.state",
    "add": "actors.state",
    "replace": "actors.state",
    "Tool": "sandbox.tool",
    "Verification": "sandbox.tool",
    "KeelError": "keel.errors",
    "ErrorCode": "keel.errors",
    "InputError": "keel.errors",
}

__all__ = [
    "END",
    "ErrorCode",
    "InputError",
    "Keel",
    "KeelConfig",
    "KeelError",
    "NodeContext",
    "RetryPolicy",
    "RunState",
    "RunStatus",
    "Tool",
    "Verification",
    "Workflow",
    "add",
    "append",
    "load_config",
    "merge",
    "replace",
]

if TYPE_CHECKING:
    from actors.state import RunState, RunStatus, add, append, merge, replace
    from actors.workflow import END, NodeContext, RetryPolicy, Workflow
    from keel.client import Keel
    from keel.config import KeelConfig, load_config
    from keel.errors import ErrorCode, InputError, KeelError
    from sandbox.tool import Tool, Verification


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'keel' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
