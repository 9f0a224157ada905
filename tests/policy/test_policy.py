"""The shipped Casbin model and policy files, through the real enforcer."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from keel.errors import ConfigError
from keel.policy import PolicyEngine

TABLE = [
    # worker roles on tools
    ("diagnose", "tool:read_logs", "read", "allow"),
    ("diagnose", "tool:read_metrics", "read", "allow"),
    ("diagnose", "tool:restore_config", "write", "deny"),
    ("diagnose", "tool:restart_service", "write", "deny"),
    ("mitigate", "tool:read_logs", "read", "allow"),
    # every write a rule does not exempt needs a person
    ("mitigate", "tool:restore_config", "write", "approve"),
    ("mitigate", "tool:restart_service", "write", "approve"),
    ("mitigate", "tool:restart_service:checkout", "write", "approve"),
    ("mitigate", "tool:restore_snapshot:checkout", "write", "allow"),
    ("mitigate", "tool:pager", "write", "allow"),
    ("mcp", "tool:send_message", "write", "approve"),
    ("mcp", "tool:drop_database", "write", "deny"),
    # names are normalised before matching
    ("mitigate", "tool:Delete_Data", "write", "deny"),
    ("Mitigate", "TOOL:DROP_table", "write", "deny"),
    ("mitigate", "tool:drop_database", "write", "deny"),
    ("mitigate", "tool:delete_logs", "write", "deny"),
    ("planner", "tool:read_logs", "read", "deny"),
    ("unknown-role", "tool:read_logs", "read", "deny"),
    # API principals
    ("alice", "run:incident", "start", "allow"),
    ("alice", "run:incident", "approve", "allow"),
    ("bob", "run:incident", "read", "allow"),
    ("bob", "run:incident", "approve", "deny"),
    ("bob", "run:incident", "start", "deny"),
    ("mallory", "run:incident", "read", "deny"),
]


@pytest.mark.parametrize(("subject", "obj", "action", "effect"), TABLE)
def test_shipped_policy_table(subject: str, obj: str, action: str, effect: str) -> None:
    decision = PolicyEngine().decide(subject, obj, action)
    assert decision.effect == effect
    assert decision.rule, "every decision names the rule that decided it"
    if effect == "approve":
        assert decision.rule[0] in ("p2", "default")


def test_decision_names_rule_and_version() -> None:
    d = PolicyEngine().decide("mitigate", "tool:drop_database", "write")
    assert d.rule == ["p", "mitigate", "tool:drop_*", "write", "deny"]
    assert len(d.policy_version) == 12


def test_policy_reloads_without_restart(tmp_path: Path) -> None:
    model = tmp_path / "model.conf"
    policy = tmp_path / "policy.csv"
    shutil.copy(Path("policy/model.conf"), model)
    shutil.copy(Path("policy/policy.csv"), policy)
    engine = PolicyEngine(model, policy)
    before = engine.decide("diagnose", "tool:restore_config", "write")
    assert before.effect == "deny"
    time.sleep(0.01)
    policy.write_text("p, diagnose, tool:*, write, allow\n" + policy.read_text())
    after = engine.decide("diagnose", "tool:restore_config", "write")
    assert after.effect == "approve" and after.policy_version != before.policy_version


def test_broken_policy_files_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        PolicyEngine(tmp_path / "missing.conf", tmp_path / "missing.csv")
    assert info.value.field == "policy"
