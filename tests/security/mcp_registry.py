"""Tools the MCP gateway test serves: one read, one write that leaves a marker file when it
really runs (so a test can prove it did not, or did once)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, JsonValue

from keel.core.tool import Tool, Verification
from keel.server.mcp_gateway import gateway_workflow

MARKERS = Path(os.environ.get("KEEL_TEST_GATEWAY_MARKERS", "/tmp/keel-gateway"))


class EchoArgs(BaseModel):
    text: str = Field(max_length=1000)


class Echo(Tool):
    name = "echo"
    description = "say it back"
    action = "read"
    args_model = EchoArgs

    def apply(self, args: dict[str, Any], key: str) -> JsonValue:
        return {"echo": args["text"]}

    def verify(self, args: dict[str, Any], key: str) -> Verification:
        return Verification(status="not_applied", detail="read-only")


class WireArgs(BaseModel):
    to: str = Field(max_length=100)
    amount: int = Field(ge=1, le=1_000_000)


class WireMoney(Tool):
    name = "wire_money"
    description = "send money (a write: held for a person's approval)"
    action = "write"
    args_model = WireArgs

    def apply(self, args: dict[str, Any], key: str) -> JsonValue:
        MARKERS.mkdir(parents=True, exist_ok=True)
        with open(MARKERS / "wire_money", "a") as fh:
            fh.write(f"{key} {args['to']} {args['amount']}\n")
        return {"sent": args["amount"]}

    def verify(self, args: dict[str, Any], key: str) -> Verification:
        path = MARKERS / "wire_money"
        seen = path.exists() and key in path.read_text()
        return Verification(status="applied" if seen else "not_applied")


gateway = gateway_workflow("ops", [Echo(), WireMoney()])
