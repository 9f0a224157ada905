"""Routing accuracy on a labelled set the router never trained on: the content classifier
(``keel.router.classifier``) beside the length-and-kind heuristic it falls back to, and
what each costs against sending everything to the large tier.

    python -m keel.evals.routing [--set evals/suites/routing.yaml] [--train] [--out DIR]

``--train`` fits the classifier on the training split (each family's phrasings but the
held-out one) with scikit-learn's logistic regression and writes the weights the router
ships (``router/route_classifier.json``); training needs scikit-learn (the ``embeddings``
extra brings it), routing does not. Cost uses litellm's own prices for two stand-in
models (``--small-price-model``, ``--large-price-model``), since the embedded tiers cost
nothing: about 4 characters a prompt token and a fixed answer length.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import litellm
import yaml
from pydantic import BaseModel, Field

from keel.config import ComplexityWeights, RouterConfig
from keel.core.calls import ChatMessage, RouteRequest, StepKind
from keel.router.classifier import SHIPPED, RouteClassifier, features, request_text
from keel.router.complexity import choose, score

SET = Path(__file__).parent / "suites" / "routing.yaml"
ANSWER_TOKENS = 200
Tier = Literal["small", "large"]
HEURISTIC = "heuristic (kind, length, tools, failures)"


class RoutingItem(BaseModel):
    id: str = Field(min_length=1)
    family: str = Field(min_length=1)
    phrasing: int = Field(ge=0)
    kind: StepKind
    text: str = Field(min_length=1)
    tools: int = Field(default=0, ge=0)
    failures: int = Field(default=0, ge=0)
    expected: Tier

    def request(self) -> RouteRequest:
        return RouteRequest(
            messages=[ChatMessage(role="user", content=self.text)],
            kind=self.kind,
            tools=self.tools,
            failures=self.failures,
        )


class RoutingSet(BaseModel):
    name: str
    description: str = ""
    held_out_phrasing: int = Field(ge=0)
    items: list[RoutingItem] = Field(min_length=30)

    def split(self) -> tuple[list[RoutingItem], list[RoutingItem]]:
        """(training, held out): the held-out phrasing of every family never trains."""
        held = [i for i in self.items if i.phrasing == self.held_out_phrasing]
        return [i for i in self.items if i.phrasing != self.held_out_phrasing], held


def load_set(path: Path = SET) -> RoutingSet:
    return RoutingSet.model_validate(yaml.safe_load(path.read_text()))


def train(items: Sequence[RoutingItem], note: str) -> RouteClassifier:
    """Logistic regression (scikit-learn) on the router's own features, its regularisation
    chosen by cross-validation across phrasings (each fold holds one phrasing out, as the
    held-out split does), so the held-out split is never used to tune it."""
    from sklearn.feature_extraction import DictVectorizer  # noqa: PLC0415  # optional
    from sklearn.linear_model import LogisticRegressionCV  # noqa: PLC0415  # optional
    from sklearn.model_selection import GroupKFold  # noqa: PLC0415  # optional

    rows = [features(request_text(i.request()), i.kind, i.tools, i.failures) for i in items]
    vec = DictVectorizer()
    x = vec.fit_transform(rows)
    y = [i.expected == "large" for i in items]
    groups = [i.phrasing for i in items]
    folds = list(GroupKFold(n_splits=len(set(groups))).split(x, y, groups))
    model = LogisticRegressionCV(Cs=[0.03, 0.1, 0.3, 1.0, 3.0], cv=folds, max_iter=5000)
    model.fit(x, y)
    weights = {
        name: round(float(w), 5)
        for name, w in zip(vec.get_feature_names_out(), model.coef_[0], strict=True)
        if abs(w) >= 1e-4
    }
    c = float(model.C_[0])
    return RouteClassifier(
        weights=weights,
        intercept=round(float(model.intercept_[0]), 5),
        trained_on=f"{note}; C={c:g} by cross-validation across phrasings",
    )


Router = Callable[[RouteRequest], Tier]


def heuristic_router(config: RouterConfig) -> Router:
    small = config.resolved_tiers()[0].max_score
    weights: ComplexityWeights = config.weights
    return lambda req: "small" if score(req, weights)[0] <= small else "large"


def classifier_router(clf: RouteClassifier, config: RouterConfig) -> Router:
    """As the router decides with ``route_by: content``: the classifier, or the heuristic
    for a request it cannot read."""
    tiers = config.resolved_tiers()
    return lambda req: (
        "small" if choose(req, tiers, config.weights, clf).tier == "small" else "large"
    )


class Measured(BaseModel):
    router: str
    accuracy: float
    large_share: float
    cost_usd: float
    saved_vs_large: float
    misses: list[str]


def measure(
    name: str, route: Router, items: Sequence[RoutingItem], prices: dict[Tier, tuple[float, float]]
) -> Measured:
    def cost(item: RoutingItem, tier: Tier) -> float:
        inp, out = prices[tier]
        return (len(item.text) / 4) * inp + ANSWER_TOKENS * out

    chosen = [(i, route(i.request())) for i in items]
    spent = sum(cost(i, t) for i, t in chosen)
    everything_large = sum(cost(i, "large") for i in items)
    return Measured(
        router=name,
        accuracy=round(sum(t == i.expected for i, t in chosen) / len(items), 4),
        large_share=round(sum(t == "large" for _, t in chosen) / len(items), 4),
        cost_usd=round(spent, 6),
        saved_vs_large=round(1 - spent / everything_large, 4),
        misses=[f"{i.id}: {t} (expected {i.expected})" for i, t in chosen if t != i.expected],
    )


def price(model: str) -> tuple[float, float]:
    info = litellm.model_cost[model]
    return float(info["input_cost_per_token"]), float(info["output_cost_per_token"])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m keel.evals.routing", description=__doc__)
    p.add_argument("--set", type=Path, default=SET, help="the labelled routing set (YAML)")
    p.add_argument("--train", action="store_true", help="fit and write the shipped weights")
    p.add_argument("--out", type=Path, help="write routing.json here")
    p.add_argument("--small-price-model", default="gpt-4o-mini")
    p.add_argument("--large-price-model", default="gpt-4o")
    args = p.parse_args(argv)
    data = load_set(args.set)
    training, held = data.split()
    if args.train:
        note = (
            f"{args.set.name}: {len(training)} items (phrasings other than "
            f"{data.held_out_phrasing} of {len({i.family for i in data.items})} families)"
        )
        clf = train(training, note)
        SHIPPED.write_text(json.dumps(clf.model_dump(), indent=1, sort_keys=True) + "\n")
        print(f"wrote {SHIPPED} ({len(clf.weights)} weights)")
    clf = RouteClassifier.model_validate(json.loads(SHIPPED.read_text()))
    config = RouterConfig()
    prices: dict[Tier, tuple[float, float]] = {
        "small": price(args.small_price_model),
        "large": price(args.large_price_model),
    }
    rows = [
        measure("content classifier", classifier_router(clf, config), held, prices),
        measure(
            "heuristic (kind, length, tools, failures)", heuristic_router(config), held, prices
        ),
        measure("always large", lambda _req: "large", held, prices),
    ]
    print(f"held out: {len(held)} requests (phrasing {data.held_out_phrasing} of every family)")
    print(f"prices: small as {args.small_price_model}, large as {args.large_price_model}")
    print("| router | accuracy | sent to large | cost (USD) | saved vs always large |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.router} | {r.accuracy:.3f} | {r.large_share:.0%} | {r.cost_usd:.4f} | "
            f"{r.saved_vs_large:.0%} |"
        )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        body = {"held_out": len(held), "trained_on": clf.trained_on, "routers": rows}
        text = json.dumps(body, default=lambda m: m.model_dump(), indent=1)
        (args.out / "routing.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
