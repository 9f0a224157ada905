"""Routing before reasoning: a table of requests and the tier each must go to."""

from __future__ import annotations

import pytest

from keel.config import RouterConfig
from keel.core.calls import ChatMessage, RouteRequest
from keel.errors import InputError
from keel.router.complexity import choose, score

CFG = RouterConfig()
TIERS = CFG.resolved_tiers()


def req(
    kind: str, chars: int = 200, tools: int = 0, failures: int = 0, **kw: object
) -> RouteRequest:
    return RouteRequest(
        messages=[ChatMessage(role="user", content="x" * chars)],
        kind=kind,  # type: ignore[arg-type]
        tools=tools,
        failures=failures,
        **kw,  # type: ignore[arg-type]
    )


TABLE = [
    ("classify a short log line", req("classify"), "small"),
    ("classify a long incident", req("classify", chars=20_000), "small"),
    ("classify with a huge prompt", req("classify", chars=200_000), "small"),
    ("summarize logs", req("summarize", chars=8_000), "small"),
    ("summarize a very long log", req("summarize", chars=60_000), "small"),
    ("extract fields", req("extract", chars=2_000), "small"),
    ("extract after two failures", req("extract", failures=2), "large"),
    ("classify after one failure", req("classify", failures=1), "small"),
    ("classify after two failures", req("classify", failures=2), "large"),
    ("chat, short", req("chat"), "small"),
    ("chat with many tools", req("chat", tools=5), "large"),
    ("chat, long prompt", req("chat", chars=40_000), "large"),
    ("plan, no tools", req("plan"), "large"),
    ("plan with tools", req("plan", tools=6), "large"),
    ("summarize with a floor", req("summarize", min_tier="large"), "large"),
]


def test_routing_table_is_100_percent_accurate() -> None:
    hits = 0
    misses = []
    for name, request, expected in TABLE:
        got = choose(request, TIERS, CFG.weights)
        if got.tier == expected:
            hits += 1
        else:
            misses.append(f"{name}: {got.tier} ({got.reason}), expected {expected}")
    accuracy = hits / len(TABLE)
    print(f"routing accuracy: {hits}/{len(TABLE)} = {accuracy:.0%}")
    assert accuracy == 1.0, misses


@pytest.mark.parametrize("kind", ["classify", "summarize", "extract", "chat", "plan"])
def test_score_grows_with_every_feature(kind: str) -> None:
    base, _ = score(req(kind), CFG.weights)
    for bigger in (req(kind, chars=20_000), req(kind, tools=3), req(kind, failures=1)):
        assert score(bigger, CFG.weights)[0] >= base
    assert 0.0 <= base <= 1.0


def test_reason_explains_the_numbers() -> None:
    decision = choose(req("plan", tools=2), TIERS, CFG.weights)
    assert "plan 0.70" in decision.reason and "2 tools 0.08" in decision.reason
    assert decision.reason.endswith("large max 1.00")


def test_unknown_floor_names_the_field() -> None:
    with pytest.raises(InputError) as info:
        choose(req("chat", min_tier="huge"), TIERS, CFG.weights)
    assert info.value.field == "min_tier"
