"""Two `keel` processes on one store, the way two terminals meet it: the second never
drives the first one's runs. Sends are counted by the tool's own log, never the ledger."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from keel.config import KeelConfig, StorageConfig
from keel.storage import open_store
from keel.storage.leases import Leases
from keel.storage.runs import RunStore
from tests.cli.sendflow import sent
from tests.conftest import free_port, new_bucket, s3_options

pytestmark = pytest.mark.ray  # it starts Ray in processes of its own

ROOT = Path(__file__).resolve().parents[2]
# The second terminal's run comes after 15 sends, while two of the batch's runs wait for a
# gate the test opens only once that run is done: the batch is still under way whatever
# the machine's speed. On S3 every step is a round trip to the moto server.
RUNS = {"embedded": 30, "two-rays-on-s3": 24}
HELD = (15, 16)  # fewer than the orchestrator's threads: the others go on meanwhile


def keel_cli(*args: str, env: dict[str, str], **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "keel.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,  # type: ignore[call-overload]
    )


def finish(proc: subprocess.Popen[str], timeout: float = 600) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def base_env(storage: str, options: dict[str, object] | None = None) -> dict[str, str]:
    env = {**os.environ, "KEEL_STORAGE": storage, "PYTHONPATH": str(ROOT)}
    env.pop("KEEL_CONFIG", None)
    if options:
        env["KEEL_STORAGE_OPTIONS"] = json.dumps(options)
    return env


def write_tasks(tmp_path: Path, log: Path, count: int, gate: Path) -> Path:
    lines = [
        json.dumps(
            {
                "id": f"t{i}",
                "workflow": "tests.cli.sendflow:flow",
                "goal": f"message {i}",
                "inputs": {"log": str(log), "think_s": 0.3, "hold": str(gate) if i in HELD else ""},
            }
        )
        for i in range(count)
    ]
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("where", ["embedded", "two-rays-on-s3"])
def test_a_second_process_mid_batch_never_sends_twice(
    tmp_path: Path, where: str, request: pytest.FixtureRequest
) -> None:
    log = tmp_path / "sent.log"
    if where == "embedded":
        storage, options = str(tmp_path / "store"), None
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        storage, options = f"s3://{new_bucket(endpoint)}/keel", s3_options(endpoint)
    env = base_env(storage, options)
    runs_in_batch, gate = RUNS[where], tmp_path / "gate"
    tasks = write_tasks(tmp_path, log, runs_in_batch, gate)
    results = tmp_path / "results.jsonl"
    batch = keel_cli(
        "batch",
        str(tasks),
        "--concurrency",
        "6",
        "--results",
        str(results),
        "--no-progress",
        env=env,
    )
    try:
        deadline = time.monotonic() + 240
        while len(sent(log)) < 15:  # well into the batch
            assert batch.poll() is None, batch.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the batch made no progress"
            time.sleep(0.2)
        second_env = dict(env)
        if where != "embedded":
            second_env["KEEL_RAY_ADDRESS"] = "local"  # a Ray instance of its own, same bucket
        second = keel_cli(
            "run",
            "tests.cli.sendflow:flow",
            "--goal",
            "from the second terminal",
            "--input",
            f"log={log}",
            "--run-id",
            "second-1",
            env=second_env,
        )
        code2, out2 = finish(second)
        assert batch.poll() is None, "the batch ended before the second run did"
    finally:
        gate.touch()
    code1, out1 = finish(batch)
    assert code2 == 0, out2[-3000:]
    assert code1 == 0, out1[-3000:]
    lines = sent(log)
    counts = Counter(lines)
    assert len(counts) == runs_in_batch + 1, f"{len(counts)} distinct sends"
    assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1]
    store = open_store(storage, options)
    owners = {r.owner for r in Leases(store).records()}
    if where == "embedded":
        assert "attached to the Keel instance" in out2, out2[-2000:]
        assert len(owners) <= 1, owners  # one driver for the store
    runs = RunStore(store)
    second_owner = runs.load("second-1").owner
    batch_owners = {runs.load(f"batch-t{i}").owner for i in range(runs_in_batch)}
    if where == "embedded":
        assert batch_owners == {second_owner}
    else:
        assert second_owner not in batch_owners  # each instance drove its own runs only


@pytest.mark.slow
def test_run_detached_then_approve_from_another_terminal(tmp_path: Path) -> None:
    log = tmp_path / "sent.log"
    env = base_env(str(tmp_path / "store"))
    try:
        code, out = finish(
            keel_cli(
                "run",
                "tests.cli.sendflow:approved",
                "--detach",
                "--run-id",
                "held-1",
                "--input",
                f"log={log}",
                env=env,
            ),
            timeout=300,
        )
        assert code == 0, out[-3000:]
        runs = RunStore(open_store(str(tmp_path / "store")))
        deadline = time.monotonic() + 120
        while runs.read_index("held-1")["status"] != "awaiting_approval":  # type: ignore[index]
            assert time.monotonic() < deadline, "the detached run did not reach its approval"
            time.sleep(0.3)
        assert sent(log) == []
        code, out = finish(keel_cli("approve", "held-1", "--as", "alice", env=env), timeout=300)
        assert code == 0, out[-3000:]
        assert "succeeded" in out
        assert len(sent(log)) == 1
    finally:
        code, out = finish(keel_cli("down", env=env), timeout=120)
    assert code == 0 and "stopped the Keel instance" in out, out
    keel_cfg = KeelConfig(storage=StorageConfig(url=str(tmp_path / "store")))
    assert Leases(open_store(keel_cfg.storage_url())).find_embedded() is None


@pytest.mark.slow
def test_the_demo_waits_for_a_person_approving_from_another_terminal(tmp_path: Path) -> None:
    """As the README says: without --auto-approve the demo pauses, the service stays up,
    `keel approve RUN --as alice` from a second process answers, and the fix works."""
    config = tmp_path / "keel.yaml"
    config.write_text(f"router:\n  http_port: {free_port()}\n")
    env = base_env(str(tmp_path / "store"))
    demo = keel_cli("--config", str(config), "demo", "--fault", "bad_config", env=env)
    try:
        assert demo.stdout is not None
        seen = []
        for line in demo.stdout:  # until the demo says it waits, naming the run
            seen.append(line)
            if "waiting for a person" in line:
                break
        else:
            pytest.fail("the demo never waited for a person:\n" + "".join(seen)[-3000:])
        run_id = line.split("keel approve ", 1)[1].split()[0]
        code, out = finish(
            keel_cli("--config", str(config), "approve", run_id, "--as", "alice", env=env),
            timeout=300,
        )
        assert code == 0, out[-3000:]
        code, rest = finish(demo, timeout=300)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(timeout=30)
    assert code == 0, rest[-3000:]
    assert "approved by alice" in rest
    assert f"bad_config    run {run_id}: succeeded (health 503 -> 200)" in rest
    # What the person was asked, in the tool's own words, and the demo's path through the
    # tiers and policy.
    shown = "".join(seen) + rest
    assert "Stops the checkout service on port" in shown
    for said in ("policy approve", "via small", "via large", "restart_service"):
        assert said in shown
