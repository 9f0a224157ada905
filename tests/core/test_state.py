"""Reducers: the only way run state changes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keel.core.events import (
    EffectIntent,
    EffectResult,
    ErrorInfo,
    Event,
    NodeCompleted,
    NodeFailed,
    RunCreated,
    RunFinished,
    RunPaused,
    RunResumed,
    RunStatus,
    parse_event,
)
from keel.core.state import RunState, add, append, fold, merge, replace, replay
from keel.errors import RunStateError

CHANNELS = {"log": append, "n": add, "meta": merge, "last": replace}


def created(seq: int = 1) -> RunCreated:
    return RunCreated(
        seq=seq,
        run_id="r",
        workflow="w",
        workflow_ref="m:w",
        fingerprint="f",
        start="first",
        goal="g",
        inputs={},
        data={"log": [], "n": 0, "meta": {}, "last": None},
    )


def done(seq: int, updates: dict, nxt: str | None = "next") -> NodeCompleted:  # type: ignore[type-arg]
    return NodeCompleted(
        seq=seq, node="x", step=seq - 2, attempt=1, updates=updates, next=nxt, duration_s=0.0
    )


@pytest.mark.parametrize(
    ("reducer", "old", "new", "expected"),
    [
        (append, [1], 2, [1, 2]),
        (append, [1], [2, 3], [1, 2, 3]),
        (append, None, "a", ["a"]),
        (add, 2, 3, 5),
        (add, None, 1, 1),
        (merge, {"a": 1}, {"b": 2}, {"a": 1, "b": 2}),
        (merge, {"a": 1}, {"a": 2}, {"a": 2}),
        (replace, 1, 2, 2),
    ],
)
def test_channel_reducers(reducer, old, new, expected) -> None:  # type: ignore[no-untyped-def]
    assert reducer(old, new) == expected


def test_node_completed_folds_through_channels() -> None:
    s = fold(None, created(), CHANNELS)
    s = fold(s, done(2, {"log": "a", "n": 2, "meta": {"k": 1}, "last": "x"}), CHANNELS)
    s = fold(s, done(3, {"log": ["b", "c"], "n": 3, "meta": {"j": 2}}), CHANNELS)
    assert s.data == {"log": ["a", "b", "c"], "n": 5, "meta": {"k": 1, "j": 2}, "last": "x"}
    assert s.step == 2 and s.last_seq == 3 and s.next_node == "next"


def test_failure_counts_attempts_and_completion_resets_them() -> None:
    err = ErrorInfo(type="E", code="node_failed", message="boom", retryable=True)
    s = fold(None, created(), CHANNELS)
    s = fold(
        s,
        NodeFailed(seq=2, node="x", step=0, attempt=1, error=err, retry_in_s=0.1, duration_s=0),
        CHANNELS,
    )
    assert s.attempt == 2 and s.error == err
    s = fold(s, done(3, {}), CHANNELS)
    assert s.attempt == 1


def test_effect_lifecycle() -> None:
    s = fold(None, created(), CHANNELS)
    s = fold(
        s,
        EffectIntent(seq=2, node="first", step=0, attempt=1, key="k", tool="t", args={"a": 1}),
        CHANNELS,
    )
    pending = s.pending_effect()
    assert pending is not None and pending.key == "k"
    s = fold(s, EffectResult(seq=3, key="k", ok=True, result={"done": True}), CHANNELS)
    assert s.pending_effect() is None and s.effects["k"].status == "done"
    with pytest.raises(RunStateError):
        fold(s, EffectResult(seq=4, key="unknown", ok=True), CHANNELS)


def test_pause_resume_finish() -> None:
    s = fold(None, created(), CHANNELS)
    s = fold(s, RunPaused(seq=2, status=RunStatus.NEEDS_HUMAN, reason="why"), CHANNELS)
    assert s.status == RunStatus.NEEDS_HUMAN and s.reason == "why"
    s = fold(s, RunResumed(seq=3, by="alice"), CHANNELS)
    assert s.status == RunStatus.RUNNING
    s = fold(s, RunFinished(seq=4, status=RunStatus.SUCCEEDED), CHANNELS)
    assert s.status.terminal
    with pytest.raises(RunStateError, match="cannot follow"):
        fold(s, done(5, {}), CHANNELS)


def test_ledger_must_start_with_creation() -> None:
    with pytest.raises(RunStateError, match="run_created"):
        fold(None, done(1, {}), CHANNELS)
    with pytest.raises(RunStateError, match="twice"):
        fold(fold(None, created(), CHANNELS), created(2), CHANNELS)


def test_state_rejects_unknown_fields() -> None:
    s = fold(None, created(), CHANNELS)
    with pytest.raises(ValueError, match="memory"):
        RunState.model_validate({**s.model_dump(), "memory": ["not state"]})


@given(st.lists(st.lists(st.integers(), max_size=4), max_size=30))
def test_replay_of_serialised_ledger_equals_incremental_fold(batches: list[list[int]]) -> None:
    events: list[Event] = [created()]
    for i, batch in enumerate(batches):
        events.append(done(i + 2, {"log": batch, "n": len(batch)}))
    incremental = None
    for ev in events:
        incremental = fold(incremental, ev, CHANNELS)
    reloaded = [parse_event(e.model_dump(mode="json")) for e in events]
    assert replay(reloaded, CHANNELS) == incremental
    assert incremental is not None
    assert incremental.data["log"] == [x for b in batches for x in b]
    assert incremental.data["n"] == sum(len(b) for b in batches)
