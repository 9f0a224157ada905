from __future__ import annotations

import pickle
from pathlib import Path

import pytest

import keel
from keel.client import Keel
from keel.config import KeelConfig, StorageConfig, load_config
from keel.errors import (
    ConfigError,
    CorruptObjectError,
    ErrorCode,
    InputError,
    KeelError,
    StorageError,
)
from keel.instance import start_background


def test_defaults_are_the_embedded_stack(tmp_path: Path) -> None:
    cfg = load_config(env={})
    assert cfg.storage.url == "./.keel" and cfg.ray.address is None
    assert cfg.storage_url() == str(Path("./.keel").resolve())


@pytest.mark.parametrize("url", ["store", "s3://bucket/prefix"])
def test_demo_and_eval_work_where_tools_may_act_by_default(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no roots configured, the folders `keel demo` and `keel eval` prepare their
    services in are ones tools may act on: a fresh folder's `keel eval` runs."""
    monkeypatch.delenv("KEEL_TOOL_ROOTS", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(env={"KEEL_STORAGE": url})
    assert cfg.sandbox.roots == []
    roots = [Path(r) for r in cfg.tool_roots()]
    for purpose in ("demo", "evals"):
        service = cfg.workdir(purpose) / "scenario"
        assert service.is_absolute()
        assert any(service.is_relative_to(r) for r in roots), (purpose, roots)
    local = "://" not in url
    assert (Path(cfg.storage_url()) / "outbox" in roots) == local
    assert all(r.is_relative_to(tmp_path) for r in roots)  # nothing else of the host


def test_file_then_environment(tmp_path: Path) -> None:
    file = tmp_path / "keel.yaml"
    file.write_text(
        "storage:\n  url: s3://bucket/prefix\norchestrator:\n  max_concurrent_runs: 8\n"
    )
    cfg = load_config(file, env={"KEEL_STORAGE_OPTIONS": '{"endpoint_url": "http://127.0.0.1:1"}'})
    assert cfg.storage.url == "s3://bucket/prefix" and cfg.orchestrator.max_concurrent_runs == 8
    assert cfg.storage.options == {"endpoint_url": "http://127.0.0.1:1"}
    assert load_config(file, env={"KEEL_STORAGE": "/data"}).storage.url == "/data"


@pytest.mark.parametrize(
    ("text", "env", "field"),
    [
        ("storage: [1, 2", {}, "config"),
        ("- a list\n", {}, "config"),
        ("storage:\n  nope: 1\n", {}, "storage.nope"),
        ("orchestrator:\n  max_concurrent_runs: 0\n", {}, "orchestrator.max_concurrent_runs"),
        ("orchestrator:\n  shards: 0\n", {}, "orchestrator.shards"),
        ("orchestrator:\n  shards: two\n", {}, "orchestrator.shards"),
        ("", {"KEEL_STORAGE_OPTIONS": "{not json"}, "KEEL_STORAGE_OPTIONS"),
    ],
)
def test_bad_config_names_the_field(
    tmp_path: Path, text: str, env: dict[str, str], field: str
) -> None:
    file = tmp_path / "keel.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(file, env=env)
    assert info.value.field == field


@pytest.mark.parametrize(
    "err",
    [
        InputError("bad", field="inputs.x"),
        StorageError("down", key="k"),
        CorruptObjectError("torn", key="runs/r/1"),
        KeelError("plain", code=ErrorCode.EFFECT, retryable=True, extra=[1, 2]),
    ],
)
def test_errors_pickle_with_their_structure(err: KeelError) -> None:
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert (back.code, back.retryable, back.field, back.context, str(back)) == (
        err.code,
        err.retryable,
        err.field,
        err.context,
        str(err),
    )
    assert back.to_dict()["code"] == str(err.code)


def test_public_api_is_pinned() -> None:
    assert set(keel.__all__) == {
        "Approval", "Budgets", "ConfigError", "ConfinedPath", "ConflictError", "END",
        "ErrorCode", "ErrorKind", "Event", "FieldError", "InputError", "Keel", "KeelConfig",
        "KeelError", "NodeContext", "NodeOutput", "PolicyError", "RetryPolicy",
        "RunNotFoundError", "RunState", "RunStateError", "RunStatus", "RunSummary",
        "SandboxError", "StorageError", "Tool", "ToolAction", "Verification", "Workflow",
        "WorkflowError", "add", "append", "load_config", "merge", "replace",
    }  # fmt: skip
    for name in keel.__all__:
        assert getattr(keel, name) is not None


def test_a_background_instance_that_fails_to_start_says_why(tmp_path: Path) -> None:
    """``keel up --detach`` (and ``keel run --detach``) start a process whose output goes to
    a log; when it dies, the error carries the log's last lines and its exit status, not
    only the log's path (a script's or a test's folder may be gone by the time anyone
    looks)."""
    client = Keel(KeelConfig(storage=StorageConfig(url=str(tmp_path / "store"))))
    missing = tmp_path / "missing.yaml"
    with pytest.raises(KeelError) as caught:
        start_background(client, ["--config", str(missing)], timeout_s=60)
    message = str(caught.value)
    assert "exited with 2" in message
    assert f"cannot read {missing}" in message
