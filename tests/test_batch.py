"""`keel batch`: bounded, resumable, idempotent by task id; bad lines skipped by number."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
import yaml

from keel.batch import read_tasks
from keel.cli import main
from keel.client import Keel
from keel.config import KeelConfig, OrchestratorConfig, StorageConfig
from keel.errors import ConfigError


def write_config(tmp_path: Path) -> Path:
    config = {
        "storage": {"url": str(tmp_path / "store"), "fsync": False},
        "orchestrator": {"name": f"orch-{tmp_path.name}", "node_num_cpus": 0.25},
    }
    path = tmp_path / "keel.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def tasks_file(tmp_path: Path, n: int, extra: list[str] | None = None) -> Path:
    outbox = tmp_path / "outbox"
    lines = [
        json.dumps(
            {
                "id": f"t{i}",
                "goal": "checkout is down" if i % 2 else "question about invoices",
                "inputs": {"outbox": str(outbox), "reporter": f"user{i}@example.com"},
            }
        )
        for i in range(n)
    ]
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join([*lines, *(extra or [])]) + "\n")
    return path


@pytest.fixture
def config(ray_session: None, tmp_path: Path) -> Iterator[Path]:
    path = write_config(tmp_path)
    yield path

    with contextlib.suppress(ValueError):
        ray.kill(ray.get_actor(f"orch-{tmp_path.name}", namespace="keel"), no_restart=True)


BAD = [
    "not json",
    "[1, 2]",
    json.dumps({"id": "bad id!", "workflow": "demo"}),
    json.dumps({"id": "t0", "workflow": "demo"}),
    json.dumps({"id": "x", "workflow": "demo", "surprise": 1}),
    json.dumps({"id": "y", "workflow": "demo", "budgets": {"max_steps": 0}}),
]


def test_batch_runs_everything_once_and_a_second_time_does_nothing(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tasks_file(tmp_path, 12, BAD)
    args = ["--config", str(config), "batch", str(path), "--workflow", "demo"]
    args += ["--concurrency", "4", "--no-progress"]
    assert main(args) == 1  # every task succeeded, but the file had bad lines
    captured = capsys.readouterr()
    for n, why in zip(
        range(13, 19),
        [
            "not a JSON object",
            "not a JSON object",
            "id:",
            "id: 't0' already on line 1",
            "surprise: Extra inputs",
            "budgets.max_steps",
        ],
        strict=True,
    ):
        assert f"tasks.jsonl:{n}: skipped: {why}" in captured.err.replace("\n", " "), captured.err
    assert "12 started" in captured.out
    results = [json.loads(x) for x in (tmp_path / "tasks.results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in results] == [f"t{i}" for i in range(12)]
    assert {r["status"] for r in results} == {"succeeded"}
    assert {r["run_id"] for r in results} == {f"batch-t{i}" for i in range(12)}
    # Each run delivered its messages exactly once: severe tickets page and file a note.
    delivered = list((tmp_path / "outbox").glob("*.json"))
    assert len(delivered) == 6 * 2 + 6

    # The same file again, without the bad lines: nothing to do, and it says so.
    clean = tasks_file(tmp_path, 12)
    assert main([*args[:3], str(clean), *args[4:]]) == 0
    out = capsys.readouterr().out
    assert "nothing to do: all 12 tasks already finished" in out
    assert len(list((tmp_path / "outbox").glob("*.json"))) == len(delivered)
    again = [json.loads(x) for x in (tmp_path / "tasks.results.jsonl").read_text().splitlines()]
    assert [r["outcome"] for r in again] == ["skipped"] * 12


def test_batch_resumes_where_it_stopped(config: Path, tmp_path: Path) -> None:
    first = tasks_file(tmp_path, 4)
    args = ["--config", str(config), "batch", "--workflow", "demo", "--no-progress"]
    assert main([*args, str(first)]) == 0
    more = tasks_file(tmp_path, 7)  # t0..t3 done already, t4..t6 new
    assert main([*args, str(more)]) == 0
    results = [json.loads(x) for x in more.with_suffix(".results.jsonl").read_text().splitlines()]
    assert [r["outcome"] for r in results] == ["skipped"] * 4 + ["started"] * 3


@pytest.mark.parametrize(
    ("setup", "field"),
    [
        ("missing", "file"),
        ("empty", "file"),
        ("concurrency", "--concurrency"),
        ("prefix", "--prefix"),
    ],
)
def test_bad_batch_input(
    setup: str, field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    path = tasks_file(tmp_path, 1)
    args = ["--config", str(config), "batch", "--workflow", "demo", "--no-progress"]
    if setup == "missing":
        path = tmp_path / "nope.jsonl"
    elif setup == "empty":
        path.write_text("\n# only a comment\n")
    elif setup == "concurrency":
        args += ["--concurrency", "0"]
    else:
        args += ["--prefix", "bad prefix/"]
    assert main([*args, str(path)]) == 2
    assert field in capsys.readouterr().err
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*.json*"))


def test_tasks_without_workflow_need_a_default(tmp_path: Path) -> None:
    path = tasks_file(tmp_path, 2)
    tasks, bad = read_tasks(path, None)
    assert tasks == [] and [b.line for b in bad] == [1, 2]
    assert "no --workflow" in bad[0].reason
    tasks, bad = read_tasks(path, "demo")
    assert [t.workflow for t in tasks] == ["demo", "demo"] and bad == []


def test_a_client_for_other_storage_is_refused_by_a_running_orchestrator(
    ray_session: None, tmp_path: Path
) -> None:

    name = f"orch-shared-{tmp_path.name}"
    first = Keel(
        KeelConfig(
            storage=StorageConfig(url=str(tmp_path / "a"), fsync=False),
            orchestrator=OrchestratorConfig(name=name, node_num_cpus=0.25),
        )
    )
    other = Keel(
        KeelConfig(
            storage=StorageConfig(url=str(tmp_path / "b"), fsync=False),
            orchestrator=OrchestratorConfig(name=name, node_num_cpus=0.25),
        )
    )
    try:
        first.info()
        with pytest.raises(ConfigError, match=r"own orchestrator\.name") as info:
            other.start("demo", "hello", {"outbox": str(tmp_path / "outbox")})
        assert info.value.field == "orchestrator.name"
        assert not (tmp_path / "b").exists() or not list((tmp_path / "b").rglob("*.json*"))
    finally:
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(name, namespace="keel"), no_restart=True)
