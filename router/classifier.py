"""Routing that reads the request: a logistic regression over the words of the request's
content, its step kind, its length, the tools it offers and the run's failures so far,
trained on the labelled set shipped in ``evals/suites/routing.yaml``
(``python -m keel.evals.routing --train``) and shipped as weights beside this module.

Inference is a dot product, in plain Python: routing must cost far less than the call it
routes, and the router's replicas need nothing trained at start. The answer is the
probability that the request needs more than the cheapest tier; the router compares it with
the tiers' ``max_score`` as it compares the heuristic's score (``keel.router.complexity``),
which stays as the fallback when no classifier is loaded.
"""

from __future__ import annotations

import json
import math
import re
from functools import cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from keel.config import RouterConfig
from keel.core.calls import RouteRequest

SHIPPED = Path(__file__).with_name("route_classifier.json")
_WORD = re.compile(r"[a-z][a-z_]{2,}")
# Words that say nothing about how hard a request is, left out so the weights cannot learn
# the phrasing of a labelled set instead of what it asks.
_STOP_WORDS = (
    "the and for that this with from are was were has have had its into what which who not "
    "but all any can our your you them they their there then than these those been will "
    "would should could may might must does did doing about after before over under out off "
    "per via one two"
)
STOP = frozenset(_STOP_WORDS.split())


def request_text(req: RouteRequest) -> str:
    """What the request asks, without its system prompt (the same for every request of a
    kind, so it says nothing about this one)."""
    return "\n".join(m.text for m in req.messages if m.role != "system")


def features(text: str, kind: str, tools: int, failures: int) -> dict[str, float]:
    """The features one request is scored on, by name (shared by training and routing)."""
    words = set(_WORD.findall(text.lower())) - STOP
    out: dict[str, float] = {f"w:{w}": 1.0 for w in words}
    out[f"kind:{kind}"] = 1.0
    out["log_chars"] = math.log1p(len(text)) / 10
    out["length"] = min(len(text), 32_000) / 8_000  # 1.0 is about the small tier's context
    out["tools"] = min(tools, 10) / 10
    out["failures"] = min(failures, 2) / 2  # two failures in a run: the whole signal
    return out


class RouteClassifier(BaseModel):
    """Weights by feature name, and what they were trained on."""

    model_config = ConfigDict(frozen=True)

    weights: dict[str, float]
    intercept: float
    trained_on: str = Field(default="", description="the set, its size and its split")

    def probability(self, req: RouteRequest) -> tuple[float, str] | None:
        """P(the request needs more than the cheapest tier), and the features that
        pushed it most, for the route's reason; ``None`` when no word of the request is
        one the classifier learned (it cannot read it: the heuristic decides)."""
        feats = features(request_text(req), req.kind, req.tools, req.failures)
        parts = {f: self.weights[f] * v for f, v in feats.items() if f in self.weights}
        if not any(f.startswith("w:") for f in parts):
            return None
        z = self.intercept + sum(parts.values())
        p = 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))
        top = sorted(parts, key=lambda f: -abs(parts[f]))[:3]
        why = ", ".join(f"{f.removeprefix('w:')} {parts[f]:+.2f}" for f in top)
        return p, f"content classifier p={p:.3f} ({why})"


def for_config(config: RouterConfig) -> RouteClassifier | None:
    """The classifier a router with ``config`` routes by (``router.route_by``)."""
    return shipped() if config.route_by == "content" else None


@cache
def shipped() -> RouteClassifier | None:
    """The classifier shipped with Keel, or ``None`` if its weights are missing."""
    try:
        return RouteClassifier.model_validate(json.loads(SHIPPED.read_text()))
    except (OSError, ValueError):
        return None
