"""Stop a whole Ray instance in the middle of a run; a new instance finishes it from its
last checkpoint. Each half runs in its own process with its own Ray, like a user would."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keel.client import Keel
from keel.config import KeelConfig, StorageConfig
from keel.core.events import NodeCompleted, RunStatus
from tests.actors.workflows import counter, runs_of
from tests.conftest import Backend

pytestmark = pytest.mark.ray  # it starts Ray in processes of its own

ROOT = Path(__file__).resolve().parents[2]


def descendants(root: int) -> list[int]:
    """Every process below ``root``, read from /proc before anything is killed."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def keel_cmd(backend: Backend, *args: str) -> list[str]:
    return [sys.executable, "-m", "keel.cli", *args]


def cli_env(backend: Backend) -> dict[str, str]:
    env = {
        **os.environ,
        "KEEL_STORAGE": backend.url,
        "KEEL_STORAGE_OPTIONS": json.dumps(backend.options),
    }
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.mark.slow
def test_ray_instance_killed_mid_run_then_resumed(s3_backend: Backend, tmp_path: Path) -> None:
    backend = s3_backend  # checkpoints outlive the machine's processes: a bucket
    gate = tmp_path / "gate"
    run_id = f"restart-{backend.name}"
    first = subprocess.Popen(
        keel_cmd(
            backend,
            "run",
            "tests.actors.workflows:five",
            "--run-id",
            run_id,
            "--input",
            f"dir={tmp_path}",
            "--input",
            f"gate={gate}",
        ),
        cwd=ROOT,
        env=cli_env(backend),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while runs_of(tmp_path, "c") < 1:  # node c is running, blocked on the gate
            assert first.poll() is None, first.stdout.read() if first.stdout else ""
            assert time.monotonic() < deadline, "the run never reached node c"
            time.sleep(0.1)
    finally:
        # The driver, its GCS, raylet and every worker: all of that Ray instance goes.
        for pid in [first.pid, *descendants(first.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        first.wait(timeout=30)

    reader = Keel(KeelConfig(storage=StorageConfig(url=backend.url, options=backend.options)))
    assert reader.show(run_id).state.status == RunStatus.RUNNING
    assert reader.show(run_id).state.next_node == "c"

    gate.touch()
    second = subprocess.run(
        keel_cmd(backend, "resume", run_id),
        cwd=ROOT,
        env=cli_env(backend),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert "succeeded" in second.stdout

    view = reader.show(run_id)
    assert view.state.status == RunStatus.SUCCEEDED
    # Not from zero: a and charge ran once; only the interrupted node c ran again.
    assert runs_of(tmp_path, "a") == 1
    assert runs_of(tmp_path, "c") == 2, second.stdout
    assert counter(tmp_path / "charge.json") == 1
    assert counter(tmp_path / "ship.json") == 1
    completed = [e.node for e in view.events if isinstance(e, NodeCompleted)]
    assert completed == ["a", "charge", "c", "ship", "e"]
