"""The bundled demo workflow: triage a ticket durably, with two side effects.

intake -> classify -> (page_oncall if severe) -> file_note -> close. ``page_oncall`` and
``file_note`` deliver messages through ``OutboxTool``, exactly once each, however often the
orchestrator crashes.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel

from keel.core.nodes import ConfinedPath, NodeContext, RetryPolicy
from keel.core.state import append
from keel.core.workflow import END, Workflow
from keel.examples.outbox import OutboxTool

SEVERE = ("down", "outage", "data loss", "breach", "500", "crash")


class TicketInputs(BaseModel):
    outbox: ConfinedPath = ".keel/outbox"
    reporter: str = "someone@example.com"


class TicketState(BaseModel):
    summary: str = ""
    category: str = ""
    severity: str = ""
    deliveries: Annotated[list[dict[str, Any]], append] = []
    notes: Annotated[list[str], append] = []


workflow = Workflow(
    "demo",
    state=TicketState,
    inputs=TicketInputs,
    description="Triage a support ticket: classify, page on-call if severe, file a note.",
)


@workflow.node(inline=True)
def intake(state: TicketState, ctx: NodeContext) -> dict[str, Any]:
    text = " ".join(ctx.goal.split()) or "(empty ticket)"
    return {"summary": text[:200], "notes": f"ticket received from {ctx.inputs['reporter']}"}


workflow.edge("intake", "classify")


@workflow.node(retry=RetryPolicy(attempts=3, backoff_s=0.1), timeout_s=30)
def classify(state: TicketState, ctx: NodeContext) -> dict[str, Any]:
    text = state.summary.lower()
    severe = any(word in text for word in SEVERE)
    category = "incident" if severe or "error" in text else "question"
    return {
        "category": category,
        "severity": "high" if severe else "low",
        "notes": f"classified as {category}",
    }


workflow.route(
    "classify",
    lambda s: "page_oncall" if s.severity == "high" else "file_note",
    ["page_oncall", "file_note"],
)


@workflow.effect(
    OutboxTool("pager"), role="mitigate", result_field="deliveries", bind={"outbox": "outbox"}
)
def page_oncall(state: TicketState, ctx: NodeContext) -> dict[str, Any]:
    return {"outbox": ctx.inputs["outbox"], "to": "on-call", "body": f"SEV: {state.summary}"}


workflow.edge("page_oncall", "file_note")


@workflow.effect(
    OutboxTool("notes"), role="mitigate", result_field="deliveries", bind={"outbox": "outbox"}
)
def file_note(state: TicketState, ctx: NodeContext) -> dict[str, Any]:
    body = f"[{state.category}/{state.severity}] {state.summary}"
    return {"outbox": ctx.inputs["outbox"], "to": str(ctx.inputs["reporter"]), "body": body}


workflow.edge("file_note", "close")


@workflow.node(inline=True)
def close(state: TicketState, ctx: NodeContext) -> dict[str, Any]:
    return {"notes": f"closed after {len(state.deliveries)} deliveries"}


workflow.edge("close", END)
