"""Knowing when to slow down: a model answer's confidence, from the provider's token
log-probabilities, and a write after an unsure answer held for a person. In-process: the
engine on the inline runner; the node reports the model call its worker would have made."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, JsonValue

from keel.core.calls import ModelCall, TokenLogprob
from keel.core.events import ModelCalled, PolicyDecided, RunStatus
from keel.core.nodes import NodeContext, NodeOutput
from keel.core.timeline import describe as timeline_line
from keel.core.workflow import END, Workflow
from keel.policy.engine import PolicyEngine
from keel.runtime.engine import RunEngine
from keel.runtime.inline import InlineNodeRunner
from keel.runtime.tracing import describe
from keel.storage.local import LocalStore
from keel.storage.runs import RunStore
from tests.actors.workflows import CounterTool, counter
from tests.conftest import TEST_POLICY
from tests.ledger import model_called


def call(content: str, tokens: list[tuple[str, float]] | None) -> ModelCall:
    return ModelCall(
        tier="small", model="m", routed_tier="small", reason="", score=0.1, prompt_tokens=1,
        completion_tokens=1, cost=0.0, latency_s=0.0, content=content,
        logprobs=None if tokens is None else [TokenLogprob(token=t, logprob=p) for t, p in tokens],
    )  # fmt: skip


ANSWER = [('{"', 0.0), ("label", -0.01), ('": "', 0.0), ("over", -0.9), ("load", -0.2), ('"}', 0.0)]


@pytest.mark.parametrize(
    ("tokens", "value", "expected"),
    [
        (ANSWER, "overload", math.exp(-1.1)),  # the tokens that spell the label, multiplied
        (ANSWER, "label", None),  # only what comes after the key counts
        (ANSWER, "bad_config", None),  # not in the answer
        (None, "overload", None),  # the provider sent no logprobs
        ([("{}", -0.1)], "overload", None),  # tokens for another text
    ],
)
def test_the_probability_of_an_answers_value(
    tokens: list[tuple[str, float]] | None, value: str, expected: float | None
) -> None:
    got = call('{"label": "overload"}', tokens).probability_of(value, after='"label"')
    assert got == (None if expected is None else pytest.approx(expected))
    # An answer without the key it is read after says nothing about the value.
    keyless = '{"tool": "overload"}'
    assert call(keyless, [(keyless, -0.1)]).probability_of(value, after='"label"') is None


class GuessState(BaseModel):
    label: str = ""
    charged: JsonValue = None


class GuessInputs(BaseModel):
    dir: str
    confidence: float


def _workflow(tool: str) -> Workflow:
    wf = Workflow("guess", state=GuessState, inputs=GuessInputs)

    @wf.node(inline=True)
    def classify(state: GuessState, ctx: NodeContext) -> NodeOutput:
        sure = float(str(ctx.inputs["confidence"]))
        made = call('{"label": "overload"}', None).model_copy(
            update={"confidence": sure, "confidence_floor": None}
        )
        return NodeOutput(updates={"label": "overload"}, calls=[made], worker="planner-0")

    wf.edge("classify", "act")

    @wf.effect(CounterTool(tool), role="mitigate", result_field="charged")
    def act(state: GuessState, ctx: NodeContext) -> dict[str, Any]:
        return {"path": str(Path(str(ctx.inputs["dir"])) / "charge.json")}

    wf.edge("act", END)
    return wf.validate()


# "charge" is a write the test policy exempts from approval (p3); "bump" is one it holds.
WORKFLOWS = {tool: _workflow(tool) for tool in ("charge", "bump")}


@pytest.mark.parametrize(
    ("tool", "floor", "confidence", "held"),
    [
        ("charge", 0.6, 0.3, "approve_below_confidence"),  # the exemption is withdrawn
        ("charge", 0.6, 0.9, None),
        ("charge", None, 0.3, None),
        ("bump", 0.6, 0.3, "default"),  # held anyway: the person is told it was unsure
        ("bump", None, 0.3, "default"),
    ],
)
async def test_a_write_after_an_unsure_answer_waits_for_a_person(
    tmp_path: Path, tool: str, floor: float | None, confidence: float, held: str | None
) -> None:
    engine = RunEngine(
        RunStore(LocalStore(tmp_path / "store", fsync=False)),
        InlineNodeRunner(),
        lambda _ref: WORKFLOWS[tool],
        policy=PolicyEngine(None, TEST_POLICY),
        approve_below=floor,
    )
    try:
        made = await engine.create(
            "guess", "g", {"dir": str(tmp_path), "confidence": confidence}, principal="alice"
        )
        st = await engine.wait(made.run_id, 30)
        if held:
            assert st.status == RunStatus.AWAITING_APPROVAL
            told = "classify (small) answered with confidence 0.30 < 0.60"
            assert (told in st.reason) is (floor is not None)
            assert counter(tmp_path / "charge.json") == 0  # nothing ran before a person said
            events = (await engine.view(made.run_id)).events
            decided = [e for e in events if isinstance(e, PolicyDecided)]
            assert decided[-1].effect == "approve" and decided[-1].rule[0] == held
            await engine.decide_approval(made.run_id, "dave", True, "looked at it")
            st = await engine.wait(made.run_id, 30)
        assert st.status == RunStatus.SUCCEEDED, st.reason
        assert counter(tmp_path / "charge.json") == 1
    finally:
        await engine.close()


def test_the_trace_and_the_timeline_show_the_confidence_and_the_threshold() -> None:
    ev = model_called(confidence=0.2, confidence_floor=0.6, escalated_from=None)
    _name, attrs, _duration = describe(ev)
    assert attrs["keel.confidence"] == 0.2 and attrs["keel.confidence_floor"] == 0.6
    assert "keel.escalated_from" not in attrs
    assert isinstance(ev, ModelCalled)
    assert timeline_line(ev)[1].endswith(", confidence 0.20 (floor 0.60)")
    assert "confidence" not in timeline_line(model_called())[1]
