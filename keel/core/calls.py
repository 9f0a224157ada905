"""Typed requests and records of the model router."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

StepKind = Literal["classify", "summarize", "extract", "chat", "plan"]


ContentPart = Annotated[dict[str, Any], Field(description='e.g. {"type": "text", "text": "..."}')]


TRACEPARENT = r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"


class ChatMessage(BaseModel):
    """One message as OpenAI's API writes it: the content is text, a list of content
    parts, or null (an assistant message that only calls tools); a tool's answer names
    the call it answers."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: (
        Annotated[str, Field(max_length=400_000)]
        | Annotated[list[ContentPart], Field(max_length=1000)]
        | None
    ) = ""
    tool_calls: list[dict[str, Any]] | None = Field(default=None, max_length=128)
    tool_call_id: str | None = Field(default=None, max_length=200)

    @property
    def text(self) -> str:
        """The message's text, its text parts joined (what routing measures)."""
        if isinstance(self.content, list):
            return "\n".join(
                str(p.get("text", "")) for p in self.content if p.get("type") == "text"
            )
        return self.content or ""


class RouteRequest(BaseModel):
    """A model request plus the features the router scores before any reasoning."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    kind: StepKind = "chat"
    tools: int = Field(default=0, ge=0, le=1000, description="tools offered to the model")
    failures: int = Field(default=0, ge=0, le=1000, description="earlier failures in the run")
    min_tier: str | None = Field(default=None, description="escalation floor")
    tier: str | None = Field(
        default=None, description="exactly this tier, no routing (evaluation, counterfactuals)"
    )
    response_format: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=32_000)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    functions: list[dict[str, Any]] | None = Field(
        default=None, max_length=128, description="OpenAI `tools`: functions the model may call"
    )
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    traceparent: str | None = Field(
        default=None, pattern=TRACEPARENT, description="W3C trace context sent to the provider"
    )
    logprobs: bool | None = Field(
        default=None, description="ask for the answer's token log-probabilities (confidence)"
    )

    def provider_options(self) -> dict[str, Any]:
        """What litellm passes on to the provider, under OpenAI's names."""
        options = {
            "response_format": self.response_format,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "tools": self.functions,
            "tool_choice": self.tool_choice,
            "parallel_tool_calls": self.parallel_tool_calls,
            "logprobs": self.logprobs,
            "extra_headers": {"traceparent": self.traceparent} if self.traceparent else None,
        }
        return {k: v for k, v in options.items() if v is not None}


class RouteDecision(BaseModel):
    model_config = ConfigDict(frozen=True)

    tier: str
    model: str
    score: float
    reason: str


class CallRecord(BaseModel):
    """What the router decided for one call and what it cost: shared by the worker's
    answer (``ModelCall``) and the ledger event that records it (``ModelCalled``)."""

    tier: str
    model: str
    routed_tier: str
    reason: str
    score: float
    prompt_tokens: int
    completion_tokens: int
    cost: float
    latency_s: float
    fallbacks: int = 0
    escalated_from: str | None = None
    tool_calls: list[dict[str, Any]] = Field(
        default_factory=list, description="the functions the model called, OpenAI's shape"
    )
    finish_reason: str = "stop"
    confidence: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="the model's probability of its answer, from the provider's logprobs",
    )
    confidence_floor: float | None = Field(
        default=None, description="the threshold in force when the confidence was judged"
    )


class TokenLogprob(BaseModel):
    """One token of an answer and its log-probability, as the provider reported it."""

    model_config = ConfigDict(frozen=True)

    token: str
    logprob: float


class ModelCall(CallRecord):
    """What one model call cost and returned; goes to the run's ledger."""

    model_config = ConfigDict(frozen=True)

    content: str
    logprobs: list[TokenLogprob] | None = Field(
        default=None, description="per token, when asked for and the provider returns them"
    )
    request: dict[str, Any] | None = Field(
        default=None, description="what was asked (RouteRequest), kept for counterfactual replay"
    )

    def probability_of(self, value: str, after: str = "") -> float | None:
        """The model's probability of having written ``value`` where it did (its first
        occurrence after ``after`` in the answer): the product over the tokens that
        overlap it. ``None`` without logprobs, or when the tokens do not spell the answer
        (a provider that reports them for another text)."""
        if not self.logprobs or not value:
            return None
        if "".join(t.token for t in self.logprobs) != self.content:
            return None
        at = self.content.find(after) if after else 0
        start = self.content.find(value, at + len(after)) if at >= 0 else -1
        if start < 0:
            return None
        end, pos, total = start + len(value), 0, 0.0
        for t in self.logprobs:
            if pos < end and pos + len(t.token) > start:
                total += t.logprob
            pos += len(t.token)
        return min(1.0, math.exp(total))


RECALLED_TEXT_MAX = 4000


class Recalled(BaseModel):
    """One item a retrieval returned, with its score (its text capped: replay needs what
    the node read, not the whole document)."""

    id: str
    kind: str
    title: str = ""
    text: str = Field(default="", max_length=RECALLED_TEXT_MAX)
    score: float


class RecallRecord(BaseModel):
    """A retrieval a node made: what it asked and what came back, in rank order. Shared by
    the node's output and the ledger event (``MemoryRecalled``) that replay answers from."""

    query: str
    k: int
    kind: str | None = None
    namespace: str = "shared"
    tags: list[str] = []
    method: str
    items: list[Recalled] = []
