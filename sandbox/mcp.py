"""Tools over the Model Context Protocol, governed exactly like native tools.

``MCPTools(url, read_only=[...])`` imports the tools of an MCP server (streamable HTTP,
official ``mcp`` SDK) into a workflow: each becomes a ``Tool`` whose argument schema is the
server's ``inputSchema`` (validated before anything runs) and which runs on the executor
like any other tool. Every imported tool is a ``write`` (so it needs a person's approval
unless policy exempts it) unless Keel's side names it in ``read_only``: a server's own
``readOnlyHint`` is a claim by the server, and is never trusted. MCP has no way to ask "did
this call happen?", so ``verify`` answers ``unknown`` and a crash between intent and result
hands the run to a person.

``keel.mcp_gateway`` serves Keel's own tools over MCP, through the same gate as every run.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from pydantic import JsonValue

from keel.core.tool import Tool, Verification, tool_schema
from keel.errors import SandboxError


def _run(url: str, fn: Any) -> Any:
    """Run one MCP session to completion from synchronous code, even when called from a
    thread that already runs an event loop (the orchestrator's)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_session_call(url, fn))
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, _session_call(url, fn)).result()


async def _session_call(url: str, fn: Any) -> Any:

    async with streamable_http_client(url) as streams:
        read, write = streams[0], streams[1]
        async with ClientSession(read, write) as session:
            await session.initialize()
            return await fn(session)


class MCPTool(Tool):
    """One tool of an MCP server."""

    def __init__(
        self,
        url: str,
        name: str,
        description: str,
        parameters: dict[str, Any],
        action: Literal["read", "write"],
    ) -> None:
        self.url = url
        self.name = name
        self.description = description
        self.parameters = parameters
        self.action = action

    def apply(self, args: dict[str, Any], key: str) -> JsonValue:
        async def call(session: Any) -> Any:
            return await session.call_tool(self.name, args)

        result = _run(self.url, call)
        texts = [getattr(c, "text", "") for c in result.content]
        if result.is_error:
            raise SandboxError(f"MCP tool {self.name} failed: {' '.join(texts)[:300]}")
        value: Any = result.structured_content
        if isinstance(value, dict) and list(value) == ["result"]:
            value = value["result"]  # how MCP wraps a plain return value
        if value is None:
            value = "\n".join(texts)
        if isinstance(value, str):
            try:
                return json.loads(value)  # type: ignore[no-any-return]
            except ValueError:
                return value
        return value  # type: ignore[no-any-return]

    def verify(self, args: dict[str, Any], key: str) -> Verification:
        return Verification(status="unknown", detail="MCP tools cannot report past calls")


class MCPTools:
    """The tools of one MCP server, listed on first use (so a workflow can name the server
    at import time, before the server is reachable)."""

    def __init__(self, url: str, read_only: Sequence[str] = ()) -> None:
        self.url = url
        self.read_only = frozenset(read_only)
        self._tools: dict[str, MCPTool] | None = None

    def load(self) -> dict[str, MCPTool]:
        if self._tools is None:

            async def listing(session: Any) -> Any:
                return await session.list_tools()

            listed = _run(self.url, listing)
            tools = {}
            for t in listed.tools:
                tools[t.name] = MCPTool(
                    self.url,
                    t.name,
                    t.description or "",
                    dict(t.input_schema),
                    "read" if t.name in self.read_only else "write",
                )
            self._tools = tools
        return self._tools

    def tool_named(self, name: str) -> Tool | None:
        return self.load().get(name)

    def names(self) -> list[str]:
        return sorted(self.load())

    def __getstate__(self) -> dict[str, Any]:
        # Listings are not shipped between processes; the allow-list is.
        return {"url": self.url, "read_only": self.read_only, "_tools": None}


__all__ = ["MCPTool", "MCPTools", "tool_schema"]
