"""Keel on a multi-node Ray cluster (head + two worker nodes on this machine), with
checkpoints on the S3-compatible server: a batch of 24 demo runs, one worker node removed
in the middle. Every run ends once, and no effect happens twice.

The cluster and the `keel batch` driver are their own processes (this test process is on
the session's Ray instance); the test checks the outcome from storage and the outbox.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from keel.core.events import EffectIntent, RunFinished, RunStatus
from keel.runtime.decisions import load_events
from keel.storage import open_store
from keel.storage.runs import RunStore
from tests.conftest import new_bucket, s3_options

pytestmark = pytest.mark.ray  # it starts Ray in processes of its own

ROOT = Path(__file__).resolve().parents[2]
RUNS = 24
REMOVE_AFTER = 8


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "cluster"
    log = open(tmp_path / "cluster.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.local_cluster", "--workers", "2", "--state", str(state)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not (state / "address").exists():
        assert proc.poll() is None, (tmp_path / "cluster.log").read_text()[-2000:]
        assert time.monotonic() < deadline, "the cluster did not come up"
        time.sleep(0.2)
    yield state
    (state / "stop").touch()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
    log.close()


def _why(log: Path, results: Path) -> str:
    """What a failed batch said, without Ray's state dumps: the tasks that did not succeed,
    then the batch's own lines."""
    failed = [x for x in results.read_text().splitlines() if '"succeeded"' not in x]
    own = [x for x in log.read_text().splitlines() if "[state-dump]" not in x]
    return "\n".join([*failed[:20], *own[-60:]])


def test_batch_survives_losing_a_worker_node(
    cluster: Path, s3_endpoint: str, tmp_path: Path
) -> None:
    url = f"s3://{new_bucket(s3_endpoint)}/keel"
    config = tmp_path / "keel.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "storage": {"url": url, "options": s3_options(s3_endpoint), "fsync": False},
                "ray": {"address": (cluster / "address").read_text()},
                "orchestrator": {"node_num_cpus": 0.25},
                "workers": {"executor": 3},
            }
        )
    )
    outbox = tmp_path / "outbox"
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"t{i:03d}",
                    "workflow": "demo",
                    "goal": "checkout is down" if i % 2 else "question about invoices",
                    "inputs": {"outbox": str(outbox), "reporter": f"user{i}@example.com"},
                }
            )
            + "\n"
            for i in range(RUNS)
        )
    )
    results = tasks.with_suffix(".results.jsonl")
    cmd = [sys.executable, "-m", "keel.cli", "--config", str(config), "batch", str(tasks)]
    # Eight in flight: a node's timeout counts from its submission, and on a 2-core machine
    # shared with the rest of the suite, dozens of Ray workers starting at once can take
    # longer than the demo's 30 s to start a classify task, which is not what this tests.
    cmd += ["--concurrency", "8", "--no-progress"]
    log = tmp_path / "batch.log"
    with open(log, "w") as out:  # a file, not a pipe: nothing blocks on a full buffer
        batch = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    # Remove a worker node once a quarter of the runs have finished.
    deadline = time.monotonic() + 300
    while not (results.exists() and len(results.read_text().splitlines()) >= REMOVE_AFTER):
        assert batch.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the batch made no progress"
        time.sleep(0.1)
    (cluster / "remove").touch()
    while not (cluster / "removed").exists():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    finished_at_removal = len(results.read_text().splitlines())
    try:
        batch.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        batch.kill()
        raise
    assert batch.returncode == 0, _why(log, results)
    assert finished_at_removal < RUNS, "the node went away after the work was done"

    # The orchestrator lives on the head: losing a worker node did not restart it.
    probe = (
        "import json, sys; from keel.client import Keel; from keel.config import load_config; "
        "k = Keel(load_config(sys.argv[1])); print('INFO', json.dumps(k.info()))"
    )
    info = subprocess.run(
        [sys.executable, "-c", probe, str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    line = next(x for x in info.stdout.splitlines() if x.startswith("INFO "))
    assert json.loads(line.removeprefix("INFO "))["restarted"] is False

    # From storage: every run ended, exactly once, and succeeded.
    store = RunStore(open_store(url, s3_options(s3_endpoint), fsync=False))
    run_ids = sorted(store.list_run_ids())
    assert run_ids == [f"batch-t{i:03d}" for i in range(RUNS)]
    intended: set[tuple[str, str]] = set()
    for run_id in run_ids:
        events = load_events(store.load(run_id).events)
        finished = [e for e in events if isinstance(e, RunFinished)]
        assert len(finished) == 1 and finished[0].status == RunStatus.SUCCEEDED, run_id
        for e in events:
            if isinstance(e, EffectIntent):
                intended.add((run_id, e.node))
    # The outbox itself: one delivery per effect node per run, never two.
    delivered: Counter[tuple[str, str]] = Counter()
    for path in outbox.glob("*.json"):
        run_id, _step, node, _attempt = json.loads(path.read_text())["key"].split("/")
        delivered[(run_id, node)] += 1
    assert set(delivered) == intended
    assert max(delivered.values()) == 1
    assert sum(delivered.values()) == RUNS // 2 * 2 + RUNS // 2  # severe ones page too

    # The same file again: nothing left to do, and it says so.
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"nothing to do: all {RUNS} tasks already finished" in again.stdout
    assert sum(1 for _ in outbox.glob("*.json")) == sum(delivered.values())
