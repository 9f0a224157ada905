"""One typed request and response per worker call (pydantic in, pydantic out)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from keel.core.calls import (
    RECALLED_TEXT_MAX,
    TRACEPARENT,
    ChatMessage,
    ModelCall,
    Recalled,
    RecallRecord,
)
from keel.core.validation import FieldError
from keel.storage.memory import NAME, SHARED, MemoryKind


class _Msg(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _ModelAsk(_Msg):
    """A request that ends in a model call, carrying the run's trace context to it."""

    traceparent: str | None = Field(default=None, pattern=TRACEPARENT)


class ToolSpec(_Msg):
    """What a planner may know about a tool: name, purpose, argument schema."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    effect: Literal["read", "write"] = "read"


class Proposal(_Msg):
    """A model's proposed action: typed JSON, not yet trusted."""

    tool: str
    args: dict[str, JsonValue] = Field(default_factory=dict)
    rationale: str = ""


class PlanRequest(_ModelAsk):
    goal: str = Field(max_length=20_000)
    observations: list[str] = Field(default_factory=list, max_length=200)
    tools: list[ToolSpec] = Field(min_length=1)
    hints: dict[str, JsonValue] = Field(default_factory=dict)
    tried: list[str] = Field(default_factory=list)
    failures: int = Field(default=0, ge=0)
    max_tokens: int = Field(
        default=128,
        ge=16,
        le=8192,
        description="the longest answer asked for: a proposal is one tool call, and a tier "
        "that cannot close its JSON in time fails fast and escalates instead of rambling",
    )


class PlanResponse(_Msg):
    proposal: Proposal | None
    errors: list[FieldError] = Field(default_factory=list)
    calls: list[ModelCall]
    worker: str


class ActRequest(_ModelAsk):
    """One turn of a tool-calling agent: the conversation so far and the tools on offer,
    asked as native tool calls (OpenAI ``tools``) through the router."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    tools: list[ToolSpec] = Field(min_length=1, max_length=128)
    failures: int = Field(default=0, ge=0)
    max_tokens: int = Field(default=512, ge=16, le=8192)

    def functions(self) -> list[dict[str, Any]]:
        return [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                },
            }
            for t in self.tools
        ]


class ActResponse(_Msg):
    """The model's turn: text (a final answer when it calls nothing) and the calls it
    proposes, each still to be validated, allowed and applied by the engine."""

    content: str
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)
    calls: list[ModelCall]
    worker: str


class ClassifyRequest(_ModelAsk):
    text: str = Field(max_length=100_000)
    labels: list[str] = Field(min_length=2, max_length=100)
    failures: int = Field(default=0, ge=0)


class ClassifyResponse(_Msg):
    label: str
    confidence: float | None = Field(
        default=None, description="the answering call's probability of its label"
    )
    calls: list[ModelCall]
    worker: str


class RetrieveRequest(_Msg):
    query: str = Field(max_length=20_000)
    k: int = Field(default=3, ge=1, le=50)
    kind: MemoryKind | None = None
    namespace: str = Field(
        default=SHARED, pattern=NAME, description="shared, or the run's principal's own"
    )
    tags: list[str] = Field(default_factory=list, max_length=20, description="items carry all")


class RetrievedItem(_Msg):
    id: str
    kind: MemoryKind
    title: str
    text: str
    score: float


class RetrieveResponse(_Msg):
    items: list[RetrievedItem]
    method: Literal["embedding", "bm25"]
    worker: str

    def record(self, req: RetrieveRequest) -> RecallRecord:
        """The request and this answer, as the ledger keeps them (``NodeOutput.recalls``)."""
        return RecallRecord(
            query=req.query,
            k=req.k,
            kind=req.kind,
            namespace=req.namespace,
            tags=req.tags,
            method=self.method,
            items=[
                Recalled(
                    id=i.id,
                    kind=i.kind,
                    title=i.title,
                    text=i.text[:RECALLED_TEXT_MAX],
                    score=i.score,
                )
                for i in self.items
            ],
        )


class ValidateRequest(_Msg):
    proposal: dict[str, JsonValue]
    tools: list[ToolSpec] = Field(min_length=1)


class ValidateResponse(_Msg):
    ok: bool
    proposal: Proposal | None = None
    errors: list[FieldError] = Field(default_factory=list)
    worker: str


class ExecuteRequest(_Msg):
    """What the executor is asked to run: a tool named by where it is declared (workflow
    and node), never a tool object; the executor finds it in its own registry, takes the
    role from the node, and an approval from the run's ledger."""

    workflow_ref: str = Field(min_length=1, max_length=300)
    node: str = Field(min_length=1, max_length=200)
    tool: str = Field(min_length=1, max_length=200)
    args: dict[str, JsonValue]
    key: str = Field(pattern=r"^[A-Za-z0-9._-]+/\d+/[^/]+/\d+$")
    verify_only: bool = False

    @property
    def run_id(self) -> str:
        return self.key.split("/")[0]

    @property
    def step(self) -> int:
        return int(self.key.split("/")[1])


class ExecuteResponse(_Msg):
    result: JsonValue = None
    verification: dict[str, JsonValue] | None = None
    worker: str
