"""Tool execution: the tool protocol now; OS isolation, snapshots and rollback build on it."""

from keel.core.tool import Tool, Verification

__all__ = ["Tool", "Verification"]
