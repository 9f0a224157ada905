"""Suites as data, the report's files, and the comparison that gates a deploy."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from PIL import Image

from keel.errors import InputError
from keel.evals.compare import compare
from keel.evals.layers import CaseResult, ScenarioResult
from keel.evals.report import Report, apply_gates, read_markdown_metrics, write
from keel.evals.suite import Gate, load_suite, parse_suite


def test_bundled_suite_covers_every_kind_of_scenario() -> None:
    suite = load_suite("incident")
    assert len(suite.scenarios) >= 20
    tags = {t for s in suite.scenarios for t in s.tags}
    assert {"success", "rollback", "denied", "malformed", "budget", "approval"} <= tags
    assert {s.fault for s in suite.scenarios} == {"none", "bad_config", "corrupt_data", "overload"}
    assert suite.models and suite.components.routing and suite.components.policy
    assert suite.gates["trajectory.safety_violations"].max == 0


MINIMAL = {"name": "s", "goal": "fix it"}


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"name": "Bad Name"}, "name"),
        ({"goal": ""}, "goal"),
        ({"concurrency": 0}, "concurrency"),
        ({"scenarios": [{"id": "a", "fault": "fire"}]}, "scenarios.0.fault"),
        ({"scenarios": [{"id": "a"}, {"id": "a"}]}, "suite"),
        (
            {"scenarios": [{"id": "a", "budgets": {"max_steps": 0}}]},
            "scenarios.0.budgets.max_steps",
        ),
        (
            {"scenarios": [{"id": "a", "budgets": {"max_money": 1}}]},
            "scenarios.0.budgets.max_money",
        ),
        (
            {"scenarios": [{"id": "a", "approval": {"decision": "maybe"}}]},
            "scenarios.0.approval.decision",
        ),
        (
            {"scenarios": [{"id": "a", "expect": {"status": ["done"]}}]},
            "scenarios.0.expect.status.0",
        ),
        ({"scenarios": [{"id": "a", "surprise": 1}]}, "scenarios.0.surprise"),
        (
            {
                "models": [
                    {"id": "m", "kind": "classify", "text": "t", "labels": ["x"], "expected": "y"}
                ]
            },
            "models.0",
        ),
        ({"gates": {"trajectory.goal_completion": {}}}, "gates.trajectory.goal_completion"),
        ({"components": {"retrieval_k": 0}}, "components.retrieval_k"),
    ],
)
def test_a_bad_suite_names_its_field(patch: dict[str, object], field: str) -> None:
    with pytest.raises(InputError) as info:
        parse_suite(yaml.safe_dump({**MINIMAL, **patch}))
    assert info.value.field == field, str(info.value)


@pytest.mark.parametrize("text", ["- a list", "name: [unclosed", "42"])
def test_not_a_suite(text: str) -> None:
    with pytest.raises(InputError, match=r"suite|YAML"):
        parse_suite(text)


def test_unknown_suite_and_scenario() -> None:
    with pytest.raises(InputError, match="no suite 'nope'"):
        load_suite("nope")
    with pytest.raises(InputError, match="--only zzz: no such scenario") as info:
        load_suite("incident").only(["zzz"])
    assert info.value.field == "--only"
    assert [s.id for s in load_suite("incident").only(["budget-steps"]).scenarios] == [
        "budget-steps"
    ]


def sample_report(**metrics: float) -> Report:
    base = {
        "model.small.accuracy": 0.5,
        "model.small.latency_p50_s": 0.3,
        "model.large.accuracy": 1.0,
        "component.policy_accuracy": 1.0,
        "trajectory.goal_completion": 1.0,
        "trajectory.safety_violations": 0.0,
        "trajectory.cost_total": 0.0123,
        "trajectory.rollbacks": 3.0,
    }
    base.update(metrics)
    gates = {"trajectory.safety_violations": Gate(max=0), "model.large.accuracy": Gate(min=0.75)}
    results = apply_gates(base, gates)
    return Report(
        suite="t",
        metrics=base,
        gates=results,
        passed=all(g.ok for g in results),
        cases=[
            CaseResult(layer="model", group=t, case="c", expected="x", got="x", ok=True)
            for t in ("small", "large")
        ]
        + [
            CaseResult(
                layer="component", group="policy", case="p", expected="allow", got="deny", ok=False
            )
        ],
        scenarios=[
            ScenarioResult(
                scenario=f"s{i}",
                tags=["success"],
                run_id=f"r{i}",
                status="succeeded" if i else "needs_human",
                passed=bool(i),
                misses=[] if i else ["status needs_human | expected succeeded"],
                safety=[],
                health_before=503,
                health_after=200,
                duration_s=1.0,
            )
            for i in range(3)
        ],
    )


def test_report_files_render_and_agree(tmp_path: Path) -> None:

    report = sample_report()
    paths = write(report, tmp_path)
    for name in ("models", "components", "trajectories"):
        with Image.open(paths[name]) as img:
            img.verify()  # a real PNG, not just a file
        with Image.open(paths[name]) as img:
            assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 200
    md = paths["markdown"].read_text()
    assert read_markdown_metrics(md) == pytest.approx(report.metrics)
    again = Report.model_validate_json(paths["json"].read_text())
    assert again.metrics == report.metrics
    assert "![trajectories](charts/trajectories.png)" in md
    assert "status needs_human \\| expected succeeded" in md  # a pipe cannot break the table


def test_gates() -> None:
    assert sample_report().passed
    failing = sample_report(**{"trajectory.safety_violations": 1.0})
    assert not failing.passed
    assert [g.metric for g in failing.gates if not g.ok] == ["trajectory.safety_violations"]
    missing = apply_gates({}, {"x.y": Gate(min=1)})
    assert missing[0].value is None and not missing[0].ok


@pytest.mark.parametrize(
    ("metrics", "verdicts", "ok"),
    [
        ({}, {}, True),
        (
            {"trajectory.safety_violations": 1.0},
            {"trajectory.safety_violations": "regressed"},
            False,
        ),
        ({"trajectory.goal_completion": 0.9}, {"trajectory.goal_completion": "regressed"}, False),
        ({"trajectory.goal_completion": 0.97}, {"trajectory.goal_completion": "unchanged"}, True),
        ({"model.small.accuracy": 0.75}, {"model.small.accuracy": "improved"}, True),
        ({"model.small.latency_p50_s": 3.0}, {"model.small.latency_p50_s": "regressed"}, True),
        ({"trajectory.cost_total": 2.0}, {"trajectory.cost_total": "regressed"}, False),
        ({"trajectory.rollbacks": 6.0}, {"trajectory.rollbacks": "changed"}, True),
        ({"component.new_metric": 1.0}, {"component.new_metric": "new"}, True),
    ],
)
def test_comparison(metrics: dict[str, float], verdicts: dict[str, str], ok: bool) -> None:
    baseline = sample_report()
    current = sample_report(**metrics)
    c = compare(current, baseline, threshold=0.05)
    got = {d.metric: d.verdict for d in c.deltas if d.verdict != "unchanged"}
    assert {k: v for k, v in verdicts.items() if v != "unchanged"} == got
    assert c.ok is ok
    for k, v in verdicts.items():
        assert next(d.verdict for d in c.deltas if d.metric == k) == v
