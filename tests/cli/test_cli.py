"""The ``keel`` command: bad input in-process through ``main(argv)`` (a process adds nothing
there), and whole runs as users run them, in a real process with real storage."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from keel.cli import main

ROOT = Path(__file__).resolve().parents[2]


def keel(*args: str, storage: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keel.cli", "--storage", str(storage), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


BAD_INPUT = [
    (["run", "nope"], "workflow"),
    (["run", "demo", "--input", "noequals"], "--input"),
    (["run", "demo", "--input", "=value"], "--input"),
    (["run", "demo", "--input", "1x=2"], "--input"),
    (["run", "demo", "--input", "reporter=[1, 2]"], "inputs.reporter"),
    (["run", "demo", "--input", "extra=1"], "inputs.extra"),
    (["run", "demo", "--run-id", "bad id!"], "run_id"),
    (["run", "demo", "--budget", "steps=0"], "budgets.max_steps"),
    (["run", "demo", "--budget", "dollars=5"], "budgets.max_dollars"),
    (["run", "demo", "--budget", "nope"], "--budget"),
    (["batch", "/nonexistent/tasks.jsonl"], "file"),
    (["eval", "nope"], "suite"),
    (["run", "tests.nowhere:wf"], "workflow"),
    (["run", "keel.examples.demo:TicketState"], "workflow"),
    (["show", "no-such-run"], "run_id"),
    (["show", "../escape"], "run_id"),
    (["resume", "no-such-run"], "run_id"),
    (["cancel", "no-such-run"], "run_id"),
    (["runs", "--status", "sleeping"], "status"),
    (["--config", "/nonexistent/keel.yaml", "runs"], "config"),
    (["frobnicate"], "invalid choice"),
    (["reject", "no-such-run"], "--reason"),
    (["reject", "no-such-run", "--reason", "no"], "run_id"),
    (["approve", "no-such-run"], "run_id"),
]


@pytest.mark.parametrize(("args", "names"), BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    tmp_path: Path, args: list[str], names: str, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = tmp_path / "store"
    try:
        code = main(["--storage", str(storage), *args])
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert names in lines[0]
    assert not storage.exists(), "bad input must not write anything"


def in_process(
    capsys: pytest.CaptureFixture[str], config: Path, storage: Path, *args: str
) -> tuple[int, str, str]:
    """``keel ARGS`` through ``main(argv)``, on the session's Ray instance."""
    code = main(["--config", str(config), "--storage", str(storage), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_run_then_runs_and_show(
    ray_session: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A whole run in-process (a real process is the demo's and the doc tests' to show):
    run, list, show, a torn checkpoint shown, then resumed."""
    storage = tmp_path / "store"
    outbox = tmp_path / "store-outbox"
    config = tmp_path / "keel.yaml"
    config.write_text(f"orchestrator:\n  name: orch-{tmp_path.name}\n  node_num_cpus: 0.25\n")

    def keel_(*args: str) -> tuple[int, str, str]:
        return in_process(capsys, config, storage, *args)

    try:
        code, out, err = keel_(
            "run", "demo", "--goal", "checkout is down", "--input", f"outbox={outbox}"
        )
        assert code == 0, out + err
        assert "succeeded" in out
        for step in ("intake", "classify", "page_oncall", "file_note", "close"):
            assert step in out

        rows = json.loads(keel_("runs", "--json")[1])
        assert [r["status"] for r in rows] == ["succeeded"] and rows[0]["workflow"] == "demo"
        run_id = rows[0]["run_id"]

        shown = json.loads(keel_("show", run_id, "--json")[1])
        assert shown["state"]["status"] == "succeeded"
        assert shown["state"]["data"]["severity"] == "high"
        types = [e["type"] for e in shown["events"]]
        assert types.count("effect_intent") == types.count("effect_result") == 2
        # Two deliveries in the outbox, one per effect.
        assert len(list(outbox.glob("*.json"))) == 2

        # A torn checkpoint: `show` warns naming the object and shows the last good state.
        ckpts = sorted((storage / "runs" / run_id / "checkpoints").iterdir())
        ckpts[-1].write_bytes(ckpts[-1].read_bytes()[:-5])
        code, out, err = keel_("show", run_id)
        assert code == 0
        assert f"runs/{run_id}/checkpoints/{ckpts[-1].name}" in err
        assert "running" in out

        code, out, err = keel_("resume", run_id)
        assert code == 0, out + err
        assert json.loads(keel_("show", run_id, "--json")[1])["state"]["status"] == "succeeded"
        assert len(list(outbox.glob("*.json"))) == 2, "the resumed run delivered nothing twice"
    finally:
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(f"orch-{tmp_path.name}", namespace="keel"), no_restart=True)


BROKEN = {
    "missing_import": ("import no_such_package_anywhere\n", "ModuleNotFoundError", 1),
    "syntax": ("def broken(:\n    pass\n", "SyntaxError", 1),
    "no_role": (
        "from pydantic import BaseModel\n"
        "from keel import Tool, Verification, Workflow\n"
        "class A(BaseModel):\n    to: str\n"
        "class Pager(Tool):\n"
        "    name = 'pager'\n    action = 'write'\n    args_model = A\n"
        "    def apply(self, args, key): return None\n"
        "    def verify(self, args, key): return Verification(status='unknown')\n"
        "wf = Workflow('w')\n"
        "@wf.effect(Pager())\n"
        "def page(state, ctx): return {}\n",
        "TypeError",
        12,
    ),
    "undeclared_tool": (
        "from keel import Tool, Verification, Workflow\n"
        "class Pager(Tool):\n"
        "    name = 'pager'\n"
        "    def apply(self, args, key): return None\n"
        "    def verify(self, args, key): return Verification(status='unknown')\n"
        "wf = Workflow('w')\n"
        "@wf.effect(Pager(), role='mitigate')\n"
        "def page(state, ctx): return {}\n",
        "declare action",
        7,
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
@pytest.mark.parametrize("command", ["run", "batch"])
def test_a_broken_workflow_is_one_line_naming_the_file_and_writes_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    case: str,
    command: str,
) -> None:
    source, names, line = BROKEN[case]
    module = f"userflows_{case}_{command}"
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.chdir(tmp_path)  # the user's own folder, as they would run keel from it
    monkeypatch.setattr(sys, "path", list(sys.path))
    storage = tmp_path / "store"
    argv = ["--storage", str(storage), "run", f"{module}:wf"]
    if command == "batch":
        tasks = tmp_path / "tasks.jsonl"
        tasks.write_text(json.dumps({"id": "t1", "goal": "page"}) + "\n")
        argv = ["--storage", str(storage), "batch", str(tasks), "--workflow", f"{module}:wf"]
    assert main(argv) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1, lines
    assert f"{module}:wf" in lines[0] and names in lines[0]
    assert f"{module}.py:{line}" in lines[0], "the message names where in the user's file"
    assert not storage.exists(), "a broken workflow must not write anything"

    # --debug shows the whole traceback, ending with the same line.
    assert main(["--debug", *argv]) == 2
    shown = capsys.readouterr().err
    assert "Traceback" in shown and shown.strip().splitlines()[-1] == lines[0]


def test_a_missing_attribute_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "userflows_attr.py").write_text("x = 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert main(["--storage", str(tmp_path / "s"), "run", "userflows_attr:wf"]) == 2
    err = capsys.readouterr().err
    assert "has no attribute 'wf'" in err and len(err.strip().splitlines()) == 1


def test_incident_demo_end_to_end(
    local_router: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`keel demo --auto-approve` in-process on the session's Ray and router (the demo as
    its own process, waiting for a person, is the two-process test's)."""
    config = tmp_path / "keel.yaml"
    config.write_text(
        f"router:\n  http_port: {local_router}\n"
        f"orchestrator:\n  name: orch-{tmp_path.name}\n  node_num_cpus: 0.25\n"
    )
    try:
        code, out, err = in_process(
            capsys, config, tmp_path / "store", "demo", "--fault", "corrupt_data", "--auto-approve"
        )
    finally:
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(f"orch-{tmp_path.name}", namespace="keel"), no_restart=True)
    # A restart cannot mend corrupt data: approved, applied, not better, rolled back, and
    # handed to a person; the demo says so and still exits 0 (it showed what it should).
    assert code == 0, out + err
    assert "corrupt_data  run" in out, out
    assert "needs_human (health 503 -> 503)" in out
    for shown in ("auto-approved", "restart_service", "rollback"):
        assert shown in out
