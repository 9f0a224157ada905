"""Routing that reads the request: the shipped content classifier on the held-out split
of the labelled set (phrasings it never trained on), beside the heuristic it falls back to,
and the fallback itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keel.config import RouterConfig, load_config
from keel.core.calls import ChatMessage, RouteRequest
from keel.errors import ConfigError
from keel.evals.routing import (
    HEURISTIC,
    classifier_router,
    heuristic_router,
    load_set,
    main,
    measure,
)
from keel.router.classifier import for_config, shipped
from keel.router.complexity import choose

CFG = RouterConfig()
PRICES = {"small": (1e-7, 4e-7), "large": (2.5e-6, 1e-5)}


def test_the_classifier_beats_the_heuristic_on_phrasings_it_never_saw() -> None:
    data = load_set()
    training, held = data.split()
    assert len(held) >= 30 and not {i.id for i in training} & {i.id for i in held}
    assert {i.phrasing for i in held} == {data.held_out_phrasing}
    clf = shipped()
    assert clf is not None and "phrasings other than 3" in clf.trained_on
    content = measure("content", classifier_router(clf, CFG), held, PRICES)
    heuristic = measure(HEURISTIC, heuristic_router(CFG), held, PRICES)
    assert content.accuracy >= 0.85, content.misses
    assert content.accuracy > heuristic.accuracy + 0.1
    assert 0 < content.saved_vs_large < 1  # cheaper than always large, never free


def test_a_request_it_cannot_read_is_routed_by_the_heuristic() -> None:
    unreadable = RouteRequest(messages=[ChatMessage(role="user", content="x" * 300)], kind="plan")
    decision = choose(unreadable, CFG.resolved_tiers(), CFG.weights, for_config(CFG))
    assert decision.tier == "large" and decision.reason.startswith("plan 0.70")
    readable = unreadable.model_copy(
        update={"messages": [ChatMessage(role="user", content="Write a SQL migration")]}
    )
    decision = choose(readable, CFG.resolved_tiers(), CFG.weights, for_config(CFG))
    assert decision.reason.startswith("content classifier p=")
    off = RouterConfig(route_by="heuristic")
    assert for_config(off) is None


def test_route_by_names_the_field_when_wrong(tmp_path: Path) -> None:
    path = tmp_path / "keel.yaml"
    path.write_text("router:\n  route_by: vibes\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.field == "router.route_by"


@given(st.text(max_size=400), st.sampled_from(["classify", "plan", "chat"]), st.integers(0, 9))
def test_the_probability_is_a_probability(text: str, kind: str, failures: int) -> None:
    clf = shipped()
    assert clf is not None
    req = RouteRequest(
        messages=[ChatMessage(role="user", content=text)],
        kind=kind,  # type: ignore[arg-type]
        failures=failures,
    )
    read = clf.probability(req)
    assert read is None or 0.0 <= read[0] <= 1.0


def test_the_report_command_writes_its_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--out", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert "| content classifier |" in shown and "| always large |" in shown
    body = json.loads((tmp_path / "routing.json").read_text())
    assert [r["router"] for r in body["routers"]] == [
        "content classifier",
        HEURISTIC,
        "always large",
    ]
