"""The workflow API refuses unsound graphs and bad inputs with errors naming the field."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from pydantic import BaseModel

from keel.core.nodes import NodeContext, RetryPolicy
from keel.core.state import append
from keel.core.workflow import END, Workflow
from keel.errors import InputError, WorkflowError
from keel.examples.outbox import OutboxTool


class S(BaseModel):
    items: Annotated[list[int], append] = []
    flag: bool = False


class Needs(BaseModel):
    count: int
    label: str = "x"


def noop(state: Any, ctx: NodeContext) -> dict[str, Any]:
    return {}


def graph(*edges: tuple[str, str], nodes: tuple[str, ...] = ("a", "b")) -> Workflow:
    wf = Workflow("g", state=S, inputs=Needs)
    for n in nodes:
        wf.node(n)(noop)
    for src, dst in edges:
        wf.edge(src, dst)
    return wf


def test_sound_graph_and_channels() -> None:
    wf = graph(("a", "b"), ("b", END)).validate()
    assert wf.start == "a"
    assert wf.channels["items"] is append
    assert wf.initial_data() == {"items": [], "flag": False}
    assert len(wf.fingerprint()) == 16


@pytest.mark.parametrize(
    ("build", "field", "match"),
    [
        (lambda: graph(("a", "b")), "edges", "no outgoing edge"),
        (lambda: graph(("a", "zzz"), ("b", END)), "edges", "unknown node"),
        (lambda: graph(("a", "b"), ("b", END), ("a", END)), "edge", "already has"),
        (lambda: graph(("a", "b"), ("b", END), nodes=("a", "b", "a")), "node", "duplicate"),
        (lambda: Workflow("empty").validate(), "nodes", "no nodes"),
    ],
)
def test_unsound_graphs_are_refused(build: Any, field: str, match: str) -> None:
    with pytest.raises(WorkflowError, match=match) as info:
        build().validate()
    assert info.value.field == field


def test_effect_result_field_must_exist() -> None:
    wf = Workflow("e", state=S)
    with pytest.raises(WorkflowError) as info:
        wf.effect(OutboxTool(), role="mitigate", result_field="nope")(noop)
    assert info.value.field == "result_field"


def test_router_must_choose_a_declared_target() -> None:
    wf = graph(("b", END))
    wf.route("a", lambda s: "c", ["b", END])
    wf.validate()
    with pytest.raises(WorkflowError, match="chose 'c'"):
        wf.next_node("a", S())
    assert wf.next_node("b", S()) is None


def test_fingerprint_tracks_shape() -> None:
    one = graph(("a", "b"), ("b", END))
    two = graph(("a", END), ("b", END))
    assert one.fingerprint() != two.fingerprint()
    assert one.fingerprint() == graph(("a", "b"), ("b", END)).fingerprint()
    # Kept between steps, but not past a change of shape made after it was first asked.
    before = one.fingerprint()
    one.node("c")(lambda state, ctx: {})
    one.edge("c", END)
    assert one.fingerprint() != before
    changed = one.fingerprint()
    one.set_start("b")
    assert one.fingerprint() not in (before, changed)


@pytest.mark.parametrize(
    ("inputs", "field"),
    [
        ({}, "inputs.count"),
        ({"count": "many"}, "inputs.count"),
        ({"count": 1, "label": ["x"]}, "inputs.label"),
        ({"count": 1, "other": 2}, "inputs.other"),
    ],
)
def test_inputs_are_validated_naming_the_field(inputs: dict[str, Any], field: str) -> None:
    with pytest.raises(InputError) as info:
        graph(("a", "b"), ("b", END)).check_inputs(inputs)
    assert info.value.field == field


def test_retry_policy_backoff_is_capped() -> None:
    policy = RetryPolicy(attempts=5, backoff_s=1.0, multiplier=3.0, max_backoff_s=5.0)
    assert [policy.delay(n) for n in (1, 2, 3)] == [1.0, 3.0, 5.0]
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
