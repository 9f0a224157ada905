"""OpenTelemetry spans (the real SDK, in-memory exporter) match the ledger one to one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from keel.client import Keel
from keel.config import TelemetryConfig
from keel.core.events import EffectResult, ModelCalled, NodeCompleted, PolicyDecided, RunStatus
from keel.runtime.tracing import run_trace_id
from tests.actors.conftest import stop_orchestrator
from tests.fakes import Scripted, script_triage, scripted_keel_config

TRACED = (NodeCompleted, ModelCalled, PolicyDecided, EffectResult)


@pytest.fixture
def keel(serve_port: int, scripted_router: Scripted, tmp_path: Path) -> Iterator[Keel]:

    client = Keel(
        scripted_keel_config(
            tmp_path, scripted_router, serve_port, telemetry=TelemetryConfig(exporter="memory")
        )
    )
    yield client
    stop_orchestrator(client)


def test_spans_match_the_ledger_one_to_one(keel: Keel, scripted: Scripted, tmp_path: Path) -> None:
    script_triage(scripted)
    st = keel.start("tests.actors.workflows:triage", "bad config on checkout")
    assert keel.watch(st.run_id, timeout_s=120).status == RunStatus.SUCCEEDED
    st2 = keel.start(
        "tests.actors.workflows:five", "", {"dir": str(tmp_path)}
    )  # effects and policy decisions too
    assert keel.watch(st2.run_id, timeout_s=120).status == RunStatus.SUCCEEDED

    spans = ray.get(keel.orchestrator().spans.remote())
    for run_id in (st.run_id, st2.run_id):
        events = [e for e in keel.show(run_id).events if isinstance(e, TRACED)]
        trace_id = f"{run_trace_id(run_id):032x}"
        mine = {s["span_id"]: s for s in spans if s["trace_id"] == trace_id}
        assert len(mine) == len(events) > 0
        assert {e.span_id for e in events} == set(mine)
        assert all(e.trace_id == trace_id for e in events)
        for ev in events:
            span = mine[ev.span_id]
            if isinstance(ev, ModelCalled):
                assert span["name"] == f"chat {ev.model}"
                assert span["attributes"]["gen_ai.request.model"] == ev.model
                assert span["attributes"]["gen_ai.usage.input_tokens"] == ev.prompt_tokens
                assert span["attributes"]["gen_ai.usage.output_tokens"] == ev.completion_tokens
                assert span["attributes"]["keel.cost_usd"] == pytest.approx(ev.cost)
            elif isinstance(ev, PolicyDecided):
                assert span["attributes"]["keel.policy.effect"] == ev.effect
            elif isinstance(ev, NodeCompleted):
                assert span["name"] == f"node {ev.node}"
        # Model and tool spans nest under their node's span.
        nodes = {e.span_id for e in events if isinstance(e, NodeCompleted)}
        for ev in events:
            if isinstance(ev, ModelCalled | EffectResult):
                assert mine[ev.span_id]["parent_id"] in nodes
