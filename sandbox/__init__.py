"""Where tools run: bubblewrap isolation that holds against root inside it, snapshots and
rollback, and MCP servers' tools; the ``Tool`` contract itself lives in ``keel.core``."""

from keel.core.tool import Tool, Verification

__all__ = ["Tool", "Verification"]
