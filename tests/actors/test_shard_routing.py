"""Which orchestrator of a sharded deployment a run lives with: no Ray needed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keel.actors.messages import OrchestratorSettings
from keel.actors.shards import Orchestrators, shard_names, shard_of
from keel.storage.leases import owner_id

RUN_IDS = st.from_regex(r"[A-Za-z0-9_.-]{1,60}", fullmatch=True)


def orchestrators(shards: int, name: str = "orchestrator") -> Orchestrators:
    return Orchestrators(OrchestratorSettings(storage_url="/tmp/x", name=name, shards=shards))


@pytest.mark.parametrize(
    ("shards", "names"),
    [
        (1, ["orchestrator"]),
        (3, ["orchestrator", "orchestrator-1", "orchestrator-2"]),
    ],
)
def test_the_first_shard_keeps_the_deployments_own_name(shards: int, names: list[str]) -> None:
    assert shard_names("orchestrator", shards) == names


@given(run_id=RUN_IDS, shards=st.integers(1, 64))
def test_a_run_always_lives_with_the_same_shard(run_id: str, shards: int) -> None:
    """Stable across processes (CRC-32, not Python's per-process salted hash)."""
    i = shard_of(run_id, shards)
    assert 0 <= i < shards and i == orchestrators(shards).index(run_id)
    assert orchestrators(1).index(run_id) == 0


def test_runs_spread_evenly_over_the_shards() -> None:
    counts = [0, 0, 0, 0]
    for n in range(4000):
        counts[shard_of(f"batch-task-{n}", 4)] += 1
    assert all(850 < c < 1150 for c in counts), counts


@pytest.mark.parametrize(
    ("owner", "shard"),
    [
        (f"{owner_id('host', '127.0.0.1-6379', 'orchestrator')}@3", 0),
        (f"{owner_id('host', '127.0.0.1-6379', 'orchestrator-2')}@1", 2),
        (owner_id("host", "127.0.0.1-6379", "orchestrator-1"), 1),
        (f"{owner_id('host', '127.0.0.1-6379', 'other')}@1", None),
        (None, None),
    ],
)
def test_an_owner_name_says_which_shard_writes_a_run(owner: str | None, shard: int | None) -> None:
    """``orchestrator-1`` is never read as ``orchestrator`` (the longest name wins)."""
    assert orchestrators(3).owning(owner) == shard
