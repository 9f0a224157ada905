"""A workflow whose one tool misbehaves inside the sandbox in the way the input asks."""

from __future__ import annotations

import sys
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, JsonValue

from keel.core.nodes import NodeContext
from keel.core.tool import Tool, Verification
from keel.core.workflow import END, Workflow
from keel.errors import SandboxError
from keel.sandbox.base import SandboxSpec
from keel.sandbox.bwrap import BubblewrapSandbox

SCRIPTS = {
    "network": "import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)",
    "write_outside": "open({target!r}, 'w').write('pwned')",
    "fork_bomb": "import os\n"
    "while True:\n"
    "    try:\n"
    "        os.fork()\n"
    "    except OSError:\n"
    "        os._exit(3)",
    "slow": "import time; time.sleep(30)",
}


class MisbehaveArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    what: Literal["network", "write_outside", "fork_bomb", "slow"]
    port: int = 9
    target: str = "/nonexistent"


class Misbehave(Tool):
    name = "misbehave"
    description = "a tool that tries something it must not"
    action = "write"
    args_model = MisbehaveArgs

    def apply(self, args: dict[str, Any], key: str) -> JsonValue:
        a = MisbehaveArgs.model_validate(args)
        code = SCRIPTS[a.what].format(port=a.port, target=a.target)
        result = BubblewrapSandbox().run(
            SandboxSpec(argv=[sys.executable, "-c", code], timeout_s=2, max_procs=32)
        )
        if not result.ok:
            raise SandboxError(
                f"sandbox stopped {a.what}: exit {result.exit_code}, killed={result.killed}, "
                f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ''}",
                retryable=False,
            )
        return {"ok": True}

    def verify(self, args: dict[str, Any], key: str) -> Verification:
        return Verification(status="not_applied")


class Inputs(BaseModel):
    what: str
    port: int = 9
    target: str = "/nonexistent"


wf = Workflow("limits", inputs=Inputs)


@wf.effect(Misbehave(), "misbehave", role="mitigate")
def misbehave(state: Any, ctx: NodeContext) -> dict[str, Any]:
    return dict(ctx.inputs)


wf.edge("misbehave", END)
