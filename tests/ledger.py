"""Ledger events built directly, for tests of what reads them (tracing, replay) without a
run to produce them."""

from __future__ import annotations

from typing import Any

from keel.core.events import ModelCalled


def model_called(**fields: Any) -> ModelCalled:
    """A ``model_called`` event: a large-tier call of the rules planner, unless ``fields``
    say otherwise."""
    defaults: dict[str, Any] = {
        "node": "plan",
        "step": 1,
        "worker": "planner-0",
        "tier": "large",
        "routed_tier": "large",
        "model": "keel-rules/planner",
        "reason": "test",
        "score": 0.8,
        "prompt_tokens": 10,
        "completion_tokens": 2,
        "cost": 0.0,
        "latency_s": 0.01,
    }
    return ModelCalled(**{**defaults, **fields})
