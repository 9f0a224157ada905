"""An MCP server the tests start as a process on 127.0.0.1 (official SDK, streamable HTTP).

``read_status`` is marked read-only; ``drop_database`` is a write that leaves a marker file
when it runs, so a test can prove it never did."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

server = MCPServer("keel-test-mcp")
MARKERS = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("/tmp")


@server.tool(
    description="read a service's status", annotations=ToolAnnotations(read_only_hint=True)
)
def read_status(service: str) -> str:
    (MARKERS / "read_status").open("a").write(service + "\n")
    return json.dumps({"service": service, "status": "ok"})


@server.tool(description="drop a database")
def drop_database(name: str) -> str:
    (MARKERS / "drop_database").open("a").write(name + "\n")
    return "dropped"


if __name__ == "__main__":
    uvicorn.run(
        server.streamable_http_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning"
    )
