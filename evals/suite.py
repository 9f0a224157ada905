"""Evaluation suites as data: what to run, in which environment, and what must be true.

A suite is one YAML file with four parts, one per layer plus its gates:

- ``models``: prompts with known answers, asked of every model tier (the bottom layer);
- ``components``: routing cases, tool-argument cases, retrieval queries and policy
  requests, each with the answer a correct component gives (the middle layer);
- ``scenarios``: whole runs in the demo environment, each with a fault to inject, who
  answers an approval, the run's own budgets and what must hold of its ledger (the top);
- ``gates``: thresholds on the report's metrics; a suite passes when every gate does.

Errors name the field (``scenarios.3.fault``) so a bad suite is fixed in one go.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from keel.config import Budgets
from keel.errors import InputError, first_error

HERE = Path(__file__).resolve().parent
BUNDLED = HERE / "suites"

Fault = Literal["none", "bad_config", "corrupt_data", "overload"]
Status = Literal["running", "awaiting_approval", "needs_human", "succeeded", "failed", "cancelled"]
StepKind = Literal["classify", "summarize", "extract", "chat", "plan"]
PolicyEffect = Literal["allow", "deny", "approve"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Approval(_Strict):
    """What the person in the loop does when the run asks: approve, reject, or nothing
    (``leave``: the run stays paused). ``principal`` is who answers; policy decides
    whether they may."""

    decision: Literal["approve", "reject", "leave"] = "approve"
    principal: str = Field(default="local", min_length=1, max_length=200)
    reason: str = Field(default="evaluation", max_length=2_000)


class Expect(_Strict):
    """What must be true of a scenario's run, checked against its ledger."""

    status: list[Status] | None = Field(default=None, min_length=1)
    healthy_after: bool | None = None
    rollback: bool | None = None
    never_tools: list[str] = Field(default_factory=list, description="never applied, ever")
    must_call: list[str] = Field(default_factory=list, description="applied at least once")
    max_steps: int | None = Field(default=None, ge=0)
    max_tool_calls: int | None = Field(default=None, ge=0)
    max_model_calls: int | None = Field(default=None, ge=0)
    max_cost: float | None = Field(default=None, ge=0.0)
    min_rejections: int | None = Field(default=None, ge=0)
    min_policy_denials: int | None = Field(default=None, ge=0)
    budget_exceeded: str | None = Field(default=None, description="which budget must stop it")
    approval_refused: bool | None = Field(default=None, description="policy refused the answer")


class Scenario(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    goal: str | None = Field(default=None, max_length=20_000, description="default: the suite's")
    fault: Fault = "none"
    approval: Approval = Field(default_factory=Approval)
    budgets: Budgets | None = None
    expect: Expect = Field(default_factory=Expect)
    again: Expect | None = Field(
        default=None,
        description="run it a second time on the same service once the first has ended, "
        "with the first run's episode in memory; the second run must meet this",
    )


class ModelPrompt(_Strict):
    """A prompt with a known answer: a label to classify into, or the tool a plan must pick."""

    id: str = Field(min_length=1, max_length=100)
    kind: Literal["classify", "plan"]
    text: str = Field(min_length=1, max_length=20_000)
    labels: list[str] = Field(default_factory=list)
    expected: str = Field(min_length=1)

    @model_validator(mode="after")
    def _labels(self) -> ModelPrompt:
        if self.kind == "classify" and self.expected not in self.labels:
            raise ValueError(f"expected {self.expected!r} is not one of labels {self.labels}")
        return self


class RoutingCase(_Strict):
    id: str = Field(min_length=1, max_length=100)
    kind: StepKind
    prompt_chars: int = Field(default=200, ge=1, le=400_000)
    tools: int = Field(default=0, ge=0, le=1000)
    failures: int = Field(default=0, ge=0, le=1000)
    expected: str = Field(min_length=1, description="the tier a correct router picks")


class ArgsCase(_Strict):
    id: str = Field(min_length=1, max_length=100)
    tool: str = Field(min_length=1)
    args: dict[str, object]
    valid: bool


class RetrievalCase(_Strict):
    id: str = Field(min_length=1, max_length=100)
    query: str = Field(min_length=1, max_length=4_000)
    relevant: list[str] = Field(min_length=1)


class PolicyCase(_Strict):
    id: str = Field(min_length=1, max_length=100)
    subject: str = Field(min_length=1)
    object: str = Field(min_length=1)
    action: str = Field(min_length=1)
    expected: PolicyEffect


class Components(_Strict):
    routing: list[RoutingCase] = Field(default_factory=list)
    args: list[ArgsCase] = Field(default_factory=list)
    retrieval: list[RetrievalCase] = Field(default_factory=list)
    retrieval_k: int = Field(default=3, ge=1, le=50)
    policy: list[PolicyCase] = Field(default_factory=list)


class Gate(_Strict):
    """A threshold on one metric of the report: ``min`` and/or ``max``."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _one(self) -> Gate:
        if self.min is None and self.max is None:
            raise ValueError("a gate needs min or max")
        return self


class Suite(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    description: str = ""
    workflow: Literal["incident"] = Field(
        default="incident", description="the environment: the bundled incident demo"
    )
    goal: str = Field(min_length=1, max_length=20_000)
    concurrency: int = Field(default=4, ge=1, le=256)
    models: list[ModelPrompt] = Field(default_factory=list)
    components: Components = Field(default_factory=Components)
    scenarios: list[Scenario] = Field(default_factory=list)
    gates: dict[str, Gate] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unique(self) -> Suite:
        seen: set[str] = set()
        for i, sc in enumerate(self.scenarios):
            if sc.id in seen:
                raise ValueError(f"scenarios.{i}.id: {sc.id!r} appears twice")
            seen.add(sc.id)
        return self

    def only(self, ids: list[str]) -> Suite:
        """The same suite with only the scenarios named (each must exist)."""
        if not ids:
            return self
        known = {s.id for s in self.scenarios}
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise InputError(
                f"--only {unknown[0]}: no such scenario in suite {self.name}", field="--only"
            )
        return self.model_copy(update={"scenarios": [s for s in self.scenarios if s.id in ids]})


def suite_path(ref: str) -> Path:
    """A path to a YAML file, or the name of a bundled suite (``incident``)."""
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise InputError(f"no suite file {ref}", field="suite")
        return path
    bundled = BUNDLED / f"{ref}.yaml"
    if not bundled.is_file():
        names = sorted(p.stem for p in BUNDLED.glob("*.yaml"))
        raise InputError(f"no suite {ref!r}: not a file, nor bundled ({names})", field="suite")
    return bundled


def parse_suite(text: str, source: str = "suite") -> Suite:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{source}: not YAML: {exc}", field="suite") from None
    if not isinstance(raw, dict):
        raise InputError(f"{source}: a suite is a mapping", field="suite")
    try:
        return Suite.model_validate(raw)
    except ValidationError as exc:
        where, msg = first_error(exc, default="suite")
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise InputError(f"{source}: {where}: {msg}{more}", field=where) from None


def load_suite(ref: str) -> Suite:
    path = suite_path(ref)
    return parse_suite(path.read_text(), str(path))
