"""A workflow whose one effect is a plain, non-idempotent send: every apply appends a line
to a log, whatever its key. The log is the tool's own counter: a key on two lines is an
effect that happened twice."""

from __future__ import annotations

import fcntl
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, JsonValue

from keel.core.nodes import NodeContext
from keel.core.tool import Tool, Verification
from keel.core.workflow import END, Workflow


class SendArgs(BaseModel):
    log: str = Field(description="the file the message is appended to")
    text: str = ""


class Send(Tool):
    """Appends one line per apply: no deduplication by key, on purpose."""

    name = "send_message"
    action = "write"
    args_model = SendArgs

    def apply(self, args: dict[str, Any], key: str) -> JsonValue:
        with open(args["log"], "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(f"{key}\n")
        return {"sent": key}

    def verify(self, args: dict[str, Any], key: str) -> Verification:
        path = Path(args["log"])
        lines = path.read_text().splitlines() if path.exists() else []
        return Verification(status="applied" if key in lines else "not_applied")


def sent(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


class Inputs(BaseModel):
    log: str
    think_s: float = 0.0
    hold: str = Field(default="", description="a file the run waits for (two minutes at most)")


class State(BaseModel):
    receipt: JsonValue = None


flow = Workflow("sendflow", state=State, inputs=Inputs)


@flow.node(inline=True)
def think(state: State, ctx: NodeContext) -> dict[str, Any]:
    time.sleep(float(ctx.inputs.get("think_s") or 0.0))  # type: ignore[arg-type]
    hold, deadline = str(ctx.inputs.get("hold") or ""), time.monotonic() + 120
    while hold and not Path(hold).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return {}


@flow.effect(Send(), role="mitigate", result_field="receipt")
def send(state: State, ctx: NodeContext) -> dict[str, Any]:
    return {"log": ctx.inputs["log"], "text": ctx.goal}


flow.edge("think", "send")
flow.edge("send", END)


class Restart(Send):
    """The same send under a name the shipped policy holds for a person's approval."""

    name = "restart_service"


approved = Workflow("approved_send", state=State, inputs=Inputs)


@approved.effect(Restart(), role="mitigate", result_field="receipt")
def restart(state: State, ctx: NodeContext) -> dict[str, Any]:
    return {"log": ctx.inputs["log"], "text": ctx.goal}


approved.edge("restart", END)
