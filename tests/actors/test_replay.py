"""`keel replay`: the control logic re-walked from the ledger, nothing called."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from keel.actors.replay import replay
from keel.client import Keel
from keel.core.events import ModelCalled, RunStatus
from keel.core.registry import load_workflow
from keel.policy.engine import PolicyEngine
from tests.actors.conftest import stop_orchestrator
from tests.fakes import Scripted, script_triage, scripted_keel_config

pytestmark = pytest.mark.ray  # it starts Ray in processes of its own

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def finished(
    serve_port: int, scripted_router: Scripted, tmp_path: Path
) -> Iterator[tuple[Keel, str]]:

    script_triage(scripted_router)
    keel = Keel(scripted_keel_config(tmp_path, scripted_router, serve_port))
    st = keel.start("tests.actors.workflows:triage", "bad config on checkout")
    assert keel.watch(st.run_id, timeout_s=120).status == RunStatus.SUCCEEDED
    stop_orchestrator(keel)
    yield keel, st.run_id


def test_replay_is_identical_then_finds_an_edited_response(
    finished: tuple[Keel, str], scripted: Scripted, tmp_path: Path
) -> None:
    keel, run_id = finished
    before = scripted.calls()
    events = keel.show(run_id).events
    wf = load_workflow("tests.actors.workflows:triage")
    report = replay(events, wf, PolicyEngine())
    assert report.identical and report.steps == 4
    assert scripted.calls() == before, "replay must not call any model"

    # A copy of the ledger with one recorded model response edited.
    edited = []
    for ev in events:
        if isinstance(ev, ModelCalled) and ev.node == "plan":
            ev = ev.model_copy(
                update={"response": '{"tool": "read_logs", "args": {"service": "checkout"}}'}
            )
        edited.append(ev)
    report = replay(edited, wf, PolicyEngine())
    assert report.divergence is not None
    assert (report.divergence.node, report.divergence.what) == ("plan", "state updates")
    assert report.divergence.recorded["proposal"]["tool"] == "restore_config"
    assert report.divergence.replayed["proposal"]["tool"] == "read_logs"

    # The same through the CLI, on the stored ledger and on the edited copy.
    copy = tmp_path / "edited.json"
    copy.write_text(json.dumps([e.model_dump(mode="json") for e in edited]))
    base = [sys.executable, "-m", "keel.cli", "--storage", str(tmp_path / "store"), "replay"]
    same = subprocess.run([*base, run_id], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert same.returncode == 0 and "identical" in same.stdout, same.stdout + same.stderr
    diff = subprocess.run(
        [*base, run_id, "--ledger", str(copy)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert diff.returncode == 1 and "diverged at" in diff.stdout and "node plan" in diff.stdout
    tree = subprocess.run(
        [sys.executable, "-m", "keel.cli", "--storage", str(tmp_path / "store"), "trace", run_id],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tree.returncode == 0 and "classify" in tree.stdout and "ms" in tree.stdout
