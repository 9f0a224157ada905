"""A tool that delivers a message by writing one file per idempotency key.

Small on purpose: it shows the contract every effectful tool keeps. ``apply`` writes the
whole message atomically under its key, so a second ``apply`` with the same key is a no-op,
and ``verify`` answers from the outbox itself, not from anything the orchestrator believes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationInfo, field_validator

from keel.core.tool import Tool, Verification, confined


class OutboxArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outbox: str = Field(min_length=1, description="the directory messages are written to")
    to: str | None = Field(default=None, max_length=500)
    body: str | None = Field(default=None, max_length=100_000)

    @field_validator("outbox")
    @classmethod
    def _confined(cls, value: str, info: ValidationInfo) -> str:
        return confined(value, info)


class OutboxTool(Tool):
    """Writes ``{"to": ..., "body": ...}`` messages into ``args["outbox"]``."""

    action = "write"
    args_model = OutboxArgs

    def __init__(self, name: str = "outbox") -> None:
        self.name = name

    @staticmethod
    def _path(args: dict[str, Any], key: str) -> Path:
        digest = hashlib.sha256(key.encode()).hexdigest()[:24]
        return Path(str(args["outbox"])) / f"{digest}.json"

    def apply(self, args: dict[str, Any], key: str) -> JsonValue:
        path = self._path(args, key)
        if path.exists():
            return {"delivered": path.name, "duplicate": True}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "to": args.get("to"), "body": args.get("body")}))
        os.replace(tmp, path)
        return {"delivered": path.name, "duplicate": False}

    def verify(self, args: dict[str, Any], key: str) -> Verification:
        path = self._path(args, key)
        if path.exists():
            return Verification(status="applied", result={"delivered": path.name})
        return Verification(status="not_applied", detail=f"{path} absent")
