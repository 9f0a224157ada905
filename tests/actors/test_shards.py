"""A sharded deployment on a real Ray instance: runs spread over two orchestrators, and
one of them dying mid-run repeats no effect."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import ray

from keel.actors.shards import shard_names, shard_of
from keel.client import Keel
from keel.config import KeelConfig, OrchestratorConfig, PolicyConfig, StorageConfig
from keel.core.events import RunStatus
from tests.actors.workflows import counter, runs_of
from tests.conftest import TEST_POLICY
from tests.fakes import stop_deployment

FIVE = "tests.actors.workflows:five"


def ids_for_each_shard(shards: int, per_shard: int) -> list[str]:
    """Run ids, ``per_shard`` of them hashing to each shard."""
    found: dict[int, list[str]] = {i: [] for i in range(shards)}
    n = 0
    while any(len(v) < per_shard for v in found.values()):
        rid = f"sharded-{uuid.uuid4().hex[:6]}-{n}"
        if len(found[shard_of(rid, shards)]) < per_shard:
            found[shard_of(rid, shards)].append(rid)
        n += 1
    return [rid for v in found.values() for rid in v]


def test_runs_live_with_their_shard_and_a_dying_shard_repeats_no_effect(
    ray_session: None, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    name = f"orch-{uuid.uuid4().hex[:8]}"
    keel = Keel(
        KeelConfig(
            storage=StorageConfig(url=str(tmp_path / "store"), fsync=False),
            orchestrator=OrchestratorConfig(name=name, shards=2, node_num_cpus=0.25),
            policy=PolicyConfig(policy=TEST_POLICY),
        )
    )
    request.addfinalizer(lambda: stop_deployment(keel.config))
    gate = tmp_path / "gate"
    run_ids = ids_for_each_shard(2, 2)
    for rid in run_ids:
        (tmp_path / rid).mkdir()
        keel.start(FIVE, "ship it", {"dir": str(tmp_path / rid), "gate": str(gate)}, run_id=rid)
    # Every run has applied its first effect and waits at the gate inside node c.
    deadline = time.monotonic() + 60
    while any(runs_of(tmp_path / rid, "c") < 1 for rid in run_ids):
        assert time.monotonic() < deadline, "the runs did not reach node c"
        time.sleep(0.1)

    names = shard_names(name, 2)
    for rid in run_ids:
        owner = str(keel.store.read_index(rid)["owner"])  # type: ignore[index]
        assert f".{names[shard_of(rid, 2)]}@" in owner, (rid, owner)

    victim = keel.orchestrators().at(1)
    before = ray.get(victim.info.remote())
    ray.kill(victim, no_restart=False)  # as kill -9 would; Ray restarts it
    gate.touch()
    finals = [keel.watch(rid, timeout_s=120) for rid in run_ids]

    assert [f.status for f in finals] == [RunStatus.SUCCEEDED] * len(run_ids)
    for rid in run_ids:  # the tool's own counters: each effect applied once
        assert counter(tmp_path / rid / "charge.json") == 1, rid
        assert counter(tmp_path / rid / "ship.json") == 1, rid
    after = ray.get(victim.info.remote())
    assert after["restarted"] and after["pid"] != before["pid"]
    assert set(after["recovered"]) >= {r for r in run_ids if shard_of(r, 2) == 1}
    # The first shard never restarted and drove its own runs to the end.
    assert not ray.get(keel.orchestrators().at(0).info.remote())["restarted"]


def test_a_call_for_a_run_another_shard_took_over_is_sent_there(
    ray_session: None, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A shard gone for good past its lease: the other takes its run over, and the
    client's call, sent first by the run's id to a new incarnation of the gone shard, is
    sent on to the shard that owns the run now."""
    name = f"orch-{uuid.uuid4().hex[:8]}"
    keel = Keel(
        KeelConfig(
            storage=StorageConfig(url=str(tmp_path / "store"), fsync=False),
            orchestrator=OrchestratorConfig(
                name=name, shards=2, node_num_cpus=0.25, lease_ttl_s=1.0
            ),
            policy=PolicyConfig(policy=TEST_POLICY),
        )
    )
    request.addfinalizer(lambda: stop_deployment(keel.config))
    gate = tmp_path / "gate"
    request.addfinalizer(gate.touch)  # lets any node task still waiting end
    (rid,) = ids_for_each_shard(2, 1)[1:]
    keel.start(FIVE, "ship it", {"dir": str(tmp_path), "gate": str(gate)}, run_id=rid)
    keel.orchestrators().at(0)  # the first shard is up, and sweeps for orphaned runs
    deadline = time.monotonic() + 60
    while runs_of(tmp_path, "c") < 1:
        assert time.monotonic() < deadline, "the run did not reach node c"
        time.sleep(0.1)

    ray.kill(keel.orchestrators().at(1), no_restart=True)
    names = shard_names(name, 2)
    deadline = time.monotonic() + 60
    while f".{names[0]}@" not in str((keel.store.read_index(rid) or {}).get("owner")):
        assert time.monotonic() < deadline, "the first shard did not take the run over"
        time.sleep(0.2)

    final = keel.cancel(rid, reason="moved")
    assert final.status == RunStatus.CANCELLED
    assert counter(tmp_path / "charge.json") == 1 and counter(tmp_path / "ship.json") == 0
