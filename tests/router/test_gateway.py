"""The real router and the real litellm against a scripted provider over HTTP."""

from __future__ import annotations

import json

import pytest

from keel.config import RouterConfig
from keel.core.calls import ChatMessage, RouteRequest
from keel.router.gateway import ModelGateway
from keel.router.rules import answer
from tests.fakes import PRICES, Scripted, two_tier_config


def ask(kind: str = "classify", text: str = "is this an incident?", **kw: object) -> RouteRequest:
    return RouteRequest(
        messages=[ChatMessage(role="user", content=text)],
        kind=kind,  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def expected_cost(tier: str, prompt: int, completion: int) -> float:
    pin, pout = PRICES[tier]
    return prompt * pin + completion * pout


async def test_simple_step_goes_to_small_with_tokens_and_cost(scripted: Scripted) -> None:
    scripted.script("small-model", reply="incident", usage=[40, 2])
    gw = ModelGateway(two_tier_config(scripted.base))
    call = await gw.complete(ask())
    assert (call.tier, call.routed_tier, call.content) == ("small", "small", "incident")
    assert (call.prompt_tokens, call.completion_tokens) == (40, 2)
    assert call.cost == pytest.approx(expected_cost("small", 40, 2))
    assert call.latency_s > 0 and call.fallbacks == 0
    assert scripted.calls() == {"small-model": 1}


@pytest.mark.parametrize("failure", [429, 500, "timeout"])
async def test_failing_small_tier_falls_back_to_large_and_says_so(
    scripted: Scripted, failure: object
) -> None:
    scripted.script("small-model", fail=[failure], reply="never")
    scripted.script("large-model", reply="from large", usage=[10, 3])
    gw = ModelGateway(two_tier_config(scripted.base, timeout_s=1.0))
    call = await gw.complete(ask())
    assert (call.routed_tier, call.tier, call.content) == ("small", "large", "from large")
    assert call.fallbacks >= 1 and "served by large" in call.reason
    assert call.cost == pytest.approx(expected_cost("large", 10, 3))
    assert scripted.calls()["small-model"] == 1


async def test_tier_in_cooldown_is_skipped(scripted: Scripted) -> None:
    scripted.script("small-model", fail=[429], reply="small")
    scripted.script("large-model", reply="large")
    gw = ModelGateway(two_tier_config(scripted.base, cooldown_s=60))
    await gw.complete(ask())
    second = await gw.complete(ask(text="another simple one"))
    assert second.tier == "large" and second.routed_tier == "small"
    # The small provider was not asked again while cooling down.
    assert scripted.calls() == {"small-model": 1, "large-model": 2}


async def test_cost_and_tokens_add_up(scripted: Scripted) -> None:
    scripted.script("small-model", reply="ok", usage=[100, 5])
    scripted.script("large-model", reply="{}", usage=[300, 20])
    gw = ModelGateway(two_tier_config(scripted.base))
    calls = [
        await gw.complete(ask()),
        await gw.complete(ask("summarize")),
        await gw.complete(ask("plan", tools=4)),
    ]
    assert [c.tier for c in calls] == ["small", "small", "large"]
    total = sum(c.cost for c in calls)
    want = 2 * expected_cost("small", 100, 5) + expected_cost("large", 300, 20)
    assert total == pytest.approx(want)
    assert sum(c.prompt_tokens for c in calls) == 500


async def test_embedded_large_tier_is_rules_through_litellm() -> None:

    gw = ModelGateway(RouterConfig())
    doc = {
        "goal": "checkout service is down after a bad config change",
        "tools": [
            {"name": "read_logs", "description": "read service logs"},
            {
                "name": "restore_config",
                "description": "restore the last good config of a service",
                "parameters": {
                    "type": "object",
                    "properties": {"service": {"type": "string"}},
                    "required": ["service"],
                },
            },
        ],
        "hints": {"service": "checkout"},
        "tried": ["read_logs"],
    }
    call = await gw.complete(ask("plan", text=json.dumps(doc), tools=2))
    assert call.tier == "large" and call.model == "keel-rules/planner"
    assert json.loads(call.content) == answer(doc)
    assert json.loads(call.content)["tool"] == "restore_config"
    assert json.loads(call.content)["args"] == {"service": "checkout"}
    assert call.prompt_tokens > 0 and call.cost == 0.0


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"goal": "disk is full on db", "labels": ["disk_full", "bad_config"]}, "disk_full"),
        ({"goal": "bad config value", "labels": ["disk_full", "bad_config"]}, "bad_config"),
    ],
)
def test_rules_classify_by_keywords(doc: dict[str, object], expected: str) -> None:
    assert answer(doc) == {"label": expected}
