"""Typed requests and records of the model router."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

StepKind = Literal["classify", "summarize", "extract", "chat", "plan"]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field(default="", max_length=400_000)


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


class ModelCall(CallRecord):
    """What one model call cost and returned; goes to the run's ledger."""

    model_config = ConfigDict(frozen=True)

    content: str
    request: dict[str, Any] | None = Field(
        default=None, description="what was asked (RouteRequest), kept for counterfactual replay"
    )
