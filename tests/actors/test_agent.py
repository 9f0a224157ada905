"""The governed agent loop on a real orchestrator: the model (the scripted provider, so
each turn is exactly what the test says) calls tools natively through the router; each
call is validated, decided by policy and applied once; what is refused goes back to the
model as the tool's message. Effects are counted by the tool's own counter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import ray

from keel.actors.replay import replay
from keel.client import Keel
from keel.core.events import ModelCalled, RunStatus
from keel.core.registry import load_workflow
from keel.policy.engine import PolicyEngine
from keel.runtime.tracing import run_traceparent
from tests.actors.conftest import make_keel, stop_orchestrator
from tests.actors.workflows import counter
from tests.conftest import TEST_POLICY, Backend
from tests.fakes import Scripted, scripted_keel_config

FIXER = "tests.actors.workflows:fixer"
TURNS = [
    # Two calls at once: one policy denies (drop_*), one with a malformed argument.
    {
        "tool_calls": [
            {"id": "call_drop", "name": "drop_everything", "arguments": {}},
            {"id": "call_bad", "name": "restore_config", "arguments": {"service": "Check Out!"}},
        ]
    },
    # The corrected call.
    {
        "tool_calls": [
            {"id": "call_ok", "name": "restore_config", "arguments": {"service": "checkout"}}
        ]
    },
    {"reply": "restored checkout"},
]


def tool_messages(state: Any) -> dict[str, str]:
    return {m["tool_call_id"]: m["content"] for m in state.data["messages"] if m["role"] == "tool"}


def test_refusals_go_back_to_the_model_and_the_corrected_call_runs_once(
    scripted_router: Scripted, serve_port: int, tmp_path: Path
) -> None:
    scripted_router.script("large-model", turns=TURNS)
    keel = Keel(scripted_keel_config(tmp_path, scripted_router, serve_port))
    try:
        st = keel.start(FIXER, "checkout's config is broken", {"counter": str(tmp_path / "n.json")})
        final = keel.watch(st.run_id, timeout_s=120)
        events = keel.show(st.run_id).events
    finally:
        stop_orchestrator(keel)
    assert final.status == RunStatus.SUCCEEDED, final.reason
    assert final.data["answer"] == "restored checkout" and final.data["turns"] == 3
    assert counter(tmp_path / "n.json") == 1  # one application, of the corrected call
    said = tool_messages(final)
    assert said["call_drop"].startswith("refused: tool:") and "deny" in said["call_drop"]
    assert said["call_bad"].startswith("refused: args.service:")
    assert '"count": 1' in said["call_ok"]
    # The refusals reached the model: its last request held all three tool messages.
    asked = httpx.get(f"{scripted_router.base}/_last").json()["large-model"]["messages"]
    assert [m.get("tool_call_id") for m in asked if m["role"] == "tool"] == [
        "call_drop",
        "call_bad",
        "call_ok",
    ]
    assert scripted_router.calls() == {"large-model": 3}
    assert len([e for e in events if isinstance(e, ModelCalled)]) == 3
    # Each turn carried the run's trace context to the provider.
    sent = scripted_router.headers()["large-model"]["traceparent"]
    assert sent == run_traceparent(st.run_id)
    # The turns replay from the ledger (recorded tool calls included), calling nothing.
    report = replay(events, load_workflow(FIXER), PolicyEngine(None, TEST_POLICY))
    assert report.identical, report.divergence
    assert scripted_router.calls() == {"large-model": 3}


def test_a_crash_mid_loop_repeats_no_model_call_and_no_effect(
    scripted_router: Scripted, ray_session: None, tmp_path: Path
) -> None:
    scripted_router.script("large-model", turns=TURNS)
    keel = make_keel(Backend("local", str(tmp_path / "store")))
    try:
        before = keel.info()
        # The orchestrator's process dies right after the corrected call is applied.
        ray.get(keel.orchestrator().arm_fault.remote("after_effect", "fix.call"))
        st = keel.start(FIXER, "checkout's config is broken", {"counter": str(tmp_path / "n.json")})
        final = keel.watch(st.run_id, timeout_s=120)
        after = keel.info()
    finally:
        stop_orchestrator(keel)
    assert after["pid"] != before["pid"] and after["restarted"], "the fault did not fire"
    assert final.status == RunStatus.SUCCEEDED, final.reason
    assert counter(tmp_path / "n.json") == 1  # settled by verify(), not applied again
    assert scripted_router.calls() == {"large-model": 3}  # no turn asked twice
    assert final.data["answer"] == "restored checkout"
