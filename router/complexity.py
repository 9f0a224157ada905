"""Scoring a request's complexity before any reasoning, and picking the cheapest tier.

By default the score is the content classifier's (``keel.router.classifier``): the
probability, from the request's words, kind, length, tools and the run's failures, that it
needs more than the cheapest tier. When it cannot read a request (no word it learned), or
``router.route_by`` is ``heuristic``, the score adds up what the request says about itself:
what kind of step it is, how long its prompt is, how many tools it offers and how often the
run has failed so far. Weights and thresholds are configuration (``router.weights``,
``router.tiers[].max_score``).
"""

from __future__ import annotations

from keel.config import ComplexityWeights, TierConfig
from keel.core.calls import RouteDecision, RouteRequest
from keel.errors import InputError
from keel.router.classifier import RouteClassifier


def prompt_tokens(req: RouteRequest) -> int:
    """A cheap estimate (4 characters a token): routing must cost less than a call."""
    return sum(len(m.text) for m in req.messages) // 4


def score(req: RouteRequest, w: ComplexityWeights) -> tuple[float, str]:
    base = w.kind.get(req.kind, w.kind.get("chat", 0.35))
    tokens = prompt_tokens(req)
    size = min(w.max_tokens_points, tokens / w.tokens_per_point)
    tools = min(w.max_tool_points, w.per_tool * req.tools)
    failures = w.per_failure * req.failures
    total = round(min(1.0, base + size + tools + failures), 4)
    why = (
        f"{req.kind} {base:.2f} + {tokens} tokens {size:.2f} + {req.tools} tools {tools:.2f}"
        f" + {req.failures} failures {failures:.2f} = {total:.2f}"
    )
    return total, why


def choose(
    req: RouteRequest,
    tiers: list[TierConfig],
    w: ComplexityWeights,
    classifier: RouteClassifier | None = None,
) -> RouteDecision:
    """The cheapest tier whose ``max_score`` covers the score, not below ``min_tier``."""
    read = classifier.probability(req) if classifier is not None else None
    value, why = read or score(req, w)
    names = [t.name for t in tiers]
    if req.tier is not None:
        if req.tier not in names:
            raise InputError(f"no tier {req.tier!r} (tiers: {names})", field="tier")
        pinned = tiers[names.index(req.tier)]
        return RouteDecision(
            tier=pinned.name, model=pinned.model, score=value, reason=f"{why}; pinned to {req.tier}"
        )
    start = 0
    if req.min_tier is not None:
        if req.min_tier not in names:
            raise InputError(f"no tier {req.min_tier!r} (tiers: {names})", field="min_tier")
        start = names.index(req.min_tier)
    for tier in tiers[start:]:
        if value <= tier.max_score:
            floor = f", floor {req.min_tier}" if req.min_tier else ""
            return RouteDecision(
                tier=tier.name,
                model=tier.model,
                score=value,
                reason=f"{why} <= {tier.name} max {tier.max_score:.2f}{floor}",
            )
    last = tiers[-1]
    return RouteDecision(tier=last.name, model=last.model, score=value, reason=f"{why}: top tier")
