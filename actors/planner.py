"""The planner: the only worker that asks models for anything, always through the router.

It proposes actions as typed JSON (a tool name and arguments) and does the small model
steps (classify, summarise). A classification and a plan each come with a confidence: the
model's probability of the label, or the tool, it wrote, from the provider's logprobs. A
classification that fails its schema, or whose confidence is below
``router.escalate_below_confidence``, is asked again one tier up; every call is returned
with its confidence and the threshold, so the ledger and the trace show the escalation (a
plan's confidence is judged by policy: ``policy.approve_below_confidence``).
"""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from typing import Any

import jsonschema
import ray
from pydantic import ValidationError

from keel.actors.worker_messages import (
    ActRequest,
    ActResponse,
    ClassifyRequest,
    ClassifyResponse,
    PlanRequest,
    PlanResponse,
    Proposal,
)
from keel.config import ROUTER_APP
from keel.core.calls import ChatMessage, ModelCall, RouteRequest
from keel.core.validation import FieldError
from keel.errors import RouterError

ROLE = "planner"

PLAN_SYSTEM = (
    "You are the planner of an operations agent. Choose exactly one tool from `tools` that "
    "moves the system toward `goal`, given `observations`. Reply with JSON only: "
    '{"tool": NAME, "args": {...}, "rationale": TEXT}.'
)
CLASSIFY_SYSTEM = 'Classify the text into one of `labels`. Reply with JSON only: {"label": LABEL}.'


def parse_proposal(text: str) -> tuple[Proposal | None, list[FieldError]]:
    try:
        raw = json.loads(text)
    except ValueError as exc:
        return None, [FieldError(field="proposal", reason=f"not JSON: {exc}")]
    if not isinstance(raw, dict):
        return None, [FieldError(field="proposal", reason="not a JSON object")]
    try:
        return Proposal.model_validate(raw), []
    except ValidationError as exc:
        return None, [
            FieldError(field=".".join(str(p) for p in e["loc"]) or "proposal", reason=e["msg"])
            for e in exc.errors()
        ]


def ensure_router(router_config: dict[str, Any] | None) -> Any:
    """The model router's Serve handle, deploying the router if it does not run. Finding a
    running one needs only its name: the router's own package sits in a layer above the
    workers and imports litellm (seconds of CPU in every worker process that loads it), so
    it is loaded, through its entry point, only to deploy."""
    # Serve costs a second of CPU to import: only a process that calls a model pays it.
    from ray import serve  # noqa: PLC0415
    from ray.serve.exceptions import RayServeException  # noqa: PLC0415

    try:
        return serve.get_app_handle(ROUTER_APP)
    except RayServeException:
        pass
    (ensure,) = entry_points(group="keel.router", name="ensure")
    return ensure.load()(router_config)


@ray.remote
class PlannerWorker:
    """Ray actor. ``plan`` and ``classify`` each take and return one typed message."""

    def __init__(self, name: str, router_config: dict[str, Any] | None = None) -> None:
        self.name = name
        self.router_config = router_config
        self._router: Any = None

    def _handle(self) -> Any:
        """The router's Serve handle; deploys the router if this cluster has none (after
        a whole-cluster restart, say), so a resumed run finds its models again. The router
        sits in a layer above the workers, so it is found through its entry point."""
        if self._router is None:
            self._router = ensure_router(self.router_config)
        return self._router

    async def _complete(self, req: RouteRequest, escalated_from: str | None = None) -> ModelCall:
        call: ModelCall = await self._handle().complete.remote(req, escalated_from)
        return call

    async def plan(self, msg: PlanRequest) -> PlanResponse:
        call = await self._complete(plan_request(msg))
        proposal, errors = parse_proposal(call.content)
        if proposal is not None:  # how sure the model was of the tool it chose
            sure = call.probability_of(proposal.tool, after='"tool"')
            call = call.model_copy(update={"confidence": sure})
        return PlanResponse(proposal=proposal, errors=errors, calls=[call], worker=self.name)

    async def act(self, msg: ActRequest) -> ActResponse:
        call = await self._complete(act_request(msg))
        return ActResponse(
            content=call.content, tool_calls=call.tool_calls, calls=[call], worker=self.name
        )

    async def classify(self, msg: ClassifyRequest) -> ClassifyResponse:
        req, schema = classify_request(msg)
        floor = (self.router_config or {}).get("escalate_below_confidence")
        calls = [judged(await self._complete(req), schema, floor)]
        label = _label(calls[-1].content, schema)
        if label is None or _unsure(calls[-1], floor):
            above = await self._handle().next_tier.remote(calls[-1].tier)
            if above is not None:
                again = req.model_copy(update={"min_tier": above})
                calls.append(
                    judged(
                        await self._complete(again, escalated_from=calls[-1].tier), schema, floor
                    )
                )
                label = _label(calls[-1].content, schema) or label
        if label is None:
            raise RouterError(
                f"no tier produced a valid label (last answer {calls[-1].content[:80]!r})",
                retryable=True,
            )
        return ClassifyResponse(
            label=label, confidence=calls[-1].confidence, calls=calls, worker=self.name
        )


def act_request(msg: ActRequest) -> RouteRequest:
    """The model request an agent's turn makes: the conversation, the tools as functions."""
    return RouteRequest(
        messages=msg.messages,
        kind="plan",
        tools=len(msg.tools),
        failures=msg.failures,
        functions=msg.functions(),
        tool_choice="auto",
        max_tokens=msg.max_tokens,
        traceparent=msg.traceparent,
    )


def plan_request(msg: PlanRequest) -> RouteRequest:
    """The model request a plan step makes (also asked of each tier by evaluations)."""
    doc = {
        "goal": msg.goal,
        "observations": msg.observations,
        "tools": [t.model_dump() for t in msg.tools],
        "hints": msg.hints,
        "tried": msg.tried,
    }
    return RouteRequest(
        messages=[
            ChatMessage(role="system", content=PLAN_SYSTEM),
            ChatMessage(role="user", content=json.dumps(doc)),
        ],
        kind="plan",
        tools=len(msg.tools),
        failures=msg.failures,
        response_format={"type": "json_object"},
        max_tokens=msg.max_tokens,
        logprobs=True,
        traceparent=msg.traceparent,
    )


def label_schema(labels: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": labels}},
        "required": ["label"],
    }


def classify_request(msg: ClassifyRequest) -> tuple[RouteRequest, dict[str, Any]]:
    """The model request a classify step makes, and the schema its answer must meet."""
    schema = label_schema(list(msg.labels))
    req = RouteRequest(
        messages=[
            ChatMessage(role="system", content=CLASSIFY_SYSTEM),
            ChatMessage(role="user", content=json.dumps({"goal": msg.text, "labels": msg.labels})),
        ],
        kind="classify",
        failures=msg.failures,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "classification", "schema": schema, "strict": True},
        },
        max_tokens=48,
        temperature=0.0,
        logprobs=True,
        traceparent=msg.traceparent,
    )
    return req, schema


def judged(call: ModelCall, schema: dict[str, Any], floor: float | None) -> ModelCall:
    """The call with its confidence (the probability of the label it wrote) and the
    threshold it was judged against."""
    label = _label(call.content, schema)
    confidence = call.probability_of(label, after='"label"') if label is not None else None
    return call.model_copy(update={"confidence": confidence, "confidence_floor": floor})


def _unsure(call: ModelCall, floor: float | None) -> bool:
    return floor is not None and call.confidence is not None and call.confidence < floor


def _label(text: str, schema: dict[str, Any]) -> str | None:
    """The label ``text`` names, if it meets ``schema`` (one Keel built, so it is not
    checked against the metaschema again: ``jsonschema.validate`` would, at half a
    millisecond a call)."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not jsonschema.Draft202012Validator(schema).is_valid(data):
        return None
    return str(data["label"])
