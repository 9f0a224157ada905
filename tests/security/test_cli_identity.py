"""The command line: who acts is not a claim, and user text is never markup. In-process
through ``main(argv)``; the runs are read from storage."""

from __future__ import annotations

import getpass
import hashlib
import json
from pathlib import Path

import pytest
import yaml

from keel.cli import main
from keel.config import load_config
from keel.errors import InputError, PolicyError
from keel.identity import acting_principal, own_principal
from keel.policy.engine import PolicyEngine
from keel.storage.local import LocalStore
from keel.storage.runs import RunStore


def config_file(tmp_path: Path, **extra: object) -> Path:
    path = tmp_path / "keel.yaml"
    path.write_text(yaml.safe_dump({"storage": {"url": str(tmp_path / "store")}, **extra}))
    return path


def test_as_is_refused_unless_policy_lets_the_user_act_as_that_principal(
    tmp_path: Path,
) -> None:

    me = getpass.getuser()
    cfg = load_config(config_file(tmp_path, cli={"users": {me: "carol"}}))
    assert own_principal(cfg) == "carol"
    with pytest.raises(PolicyError) as info:
        acting_principal(cfg, "alice")  # carol is a requester: no act_as
    assert info.value.field == "--as"
    # The embedded single-user default: everyone is local, and local may act as others.
    local = load_config(config_file(tmp_path))
    assert acting_principal(local, "alice") == "alice"


def test_an_unmapped_user_or_unknown_key_gets_no_identity(tmp_path: Path) -> None:
    cfg = load_config(config_file(tmp_path, cli={"users": {"someone-else": "alice"}}))
    with pytest.raises(InputError) as info:
        own_principal(cfg)
    assert info.value.field == "cli.users"
    keyed = load_config(
        config_file(tmp_path, api={"keys": {hashlib.sha256(b"k1").hexdigest(): "dave"}})
    )
    assert own_principal(keyed, {"KEEL_API_KEY": "k1"}) == "dave"
    with pytest.raises(InputError):
        own_principal(keyed, {"KEEL_API_KEY": "stolen"})


def test_the_cli_refuses_as_for_a_mapped_user(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:

    cfg = config_file(tmp_path, cli={"users": {getpass.getuser(): "carol"}})
    code = main(["--config", str(cfg), "run", "demo", "--as", "alice", "--detach"])
    assert code == 3  # forbidden: someone with the right must act
    assert "--as: carol may not act as alice" in capsys.readouterr().err
    assert not (tmp_path / "store" / "runs").exists()  # nothing was written
    # ... and nothing was started: no background instance (it would log next to the store).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keel.yaml"]


def test_resume_of_an_effect_is_policy_checked() -> None:

    engine = PolicyEngine()
    assert engine.decide("carol", "run:incident", "resume").effect == "deny"
    assert engine.decide("alice", "run:incident", "resume").effect == "allow"


def test_markup_in_a_goal_is_printed_as_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = RunStore(LocalStore(tmp_path / "store", fsync=False))
    goal = "restart [/x] now [bold red]please[/]"
    events = [
        {
            "type": "run_created",
            "seq": 1,
            "ts": 1.0,
            "run_id": "r-1",
            "workflow": "demo",
            "workflow_ref": "keel.examples.demo:workflow",
            "fingerprint": "f",
            "start": "intake",
            "goal": goal,
            "inputs": {},
            "data": {},
            "principal": "local",
        },
        {"type": "run_paused", "seq": 2, "ts": 2.0, "status": "needs_human", "reason": goal},
    ]
    store.append("r-1", 0, None, events, "x@1")
    store.write_index(
        "r-1",
        {
            "run_id": "r-1",
            "workflow": "demo",
            "status": "needs_human",
            "goal": goal,
            "reason": goal,
            "created_at": 1.0,
        },
    )
    cfg = str(config_file(tmp_path))
    assert main(["--config", cfg, "runs"]) == 0
    assert main(["--config", cfg, "show", "r-1"]) == 0
    printed = capsys.readouterr().out
    assert "[/x]" in printed and "[bold red]please[/]" in printed
    assert json.loads(json.dumps(goal)) == goal
