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
    "Workflow": "keel.core.workflow",
    "NodeContext": "keel.core.nodes",
    "RetryPolicy": "keel.core.nodes",
    "END": "keel.core.workflow",
    "RunState": "keel.core.state",
    "RunStatus": "keel.core.events",
    "append": "keel.core.state",
    "merge": "keel.core.state",
    "add": "keel.core.state",
    "replace": "keel.core.state",
    "Tool": "keel.core.tool",
    "Verification": "keel.core.tool",
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
    from keel.client import Keel
    from keel.config import KeelConfig, load_config
    from keel.core.events import RunStatus
    from keel.core.nodes import NodeContext, RetryPolicy
    from keel.core.state import RunState, add, append, merge, replace
    from keel.core.tool import Tool, Verification
    from keel.core.workflow import END, Workflow
    from keel.errors import ErrorCode, InputError, KeelError


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'keel' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
