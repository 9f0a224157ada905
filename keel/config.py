"""Configuration: ``keel.yaml`` (or ``$KEEL_CONFIG``), then environment overrides.

Every field has a default that runs the embedded stack: local Ray, ``./.keel`` storage.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator

from keel.errors import ConfigError, first_error


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StorageConfig(_Section):
    url: str = Field(default="./.keel", description="directory, file://, s3://bucket/prefix")
    options: dict[str, JsonValue] = Field(default_factory=dict, description="fsspec options")
    fsync: bool = True


class RayConfig(_Section):
    address: str | None = Field(default=None, description="None starts a local instance")
    num_cpus: int | None = Field(default=None, ge=1)


class OrchestratorConfig(_Section):
    name: str = "orchestrator"
    shards: int = Field(
        default=1,
        ge=1,
        le=64,
        description="how many orchestrator actors share the runs (each run lives with the one "
        "its id hashes to; more than one spreads them over the cluster's nodes)",
    )
    max_concurrent_runs: int = Field(default=256, ge=1, le=100_000)
    node_num_cpus: float = Field(default=1.0, ge=0.0)
    lease_ttl_s: float = Field(
        default=15.0,
        ge=1.0,
        le=3600.0,
        description="how long an instance's lease on its runs lasts without renewal; another "
        "instance on the same store takes its runs over only after that",
    )


class TierConfig(_Section):
    """One model tier. Tiers are listed cheapest first; a request goes to the first tier
    whose ``max_score`` covers its complexity score."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    model: str = Field(description="a litellm model string, e.g. openai/gpt-4o-mini")
    max_score: float = Field(ge=0.0, le=1.0)
    api_base: str | None = None
    api_key_env: str | None = Field(default=None, description="env var holding the key")
    input_cost_per_token: float = Field(default=0.0, ge=0.0)
    output_cost_per_token: float = Field(default=0.0, ge=0.0)
    timeout_s: float = Field(default=60.0, gt=0.0)


class ComplexityWeights(_Section):
    """How a request's features add up to a complexity score in [0, 1]."""

    kind: dict[str, float] = Field(
        default_factory=lambda: {
            "classify": 0.10,
            "summarize": 0.15,
            "extract": 0.20,
            "chat": 0.35,
            "plan": 0.70,
        }
    )
    tokens_per_point: float = Field(default=8000.0, gt=0.0, description="prompt tokens per +1.0")
    max_tokens_points: float = Field(default=0.30, ge=0.0)
    per_tool: float = Field(default=0.04, ge=0.0)
    max_tool_points: float = Field(default=0.20, ge=0.0)
    per_failure: float = Field(default=0.20, ge=0.0)


class ReplicaConfig(_Section):
    """How many replicas a Serve deployment runs: a fixed number when ``min_replicas`` equals
    ``max_replicas``, otherwise Serve autoscaling between them on ongoing requests."""

    min_replicas: int = Field(default=1, ge=0, le=1000)
    max_replicas: int = Field(default=1, ge=1, le=1000)
    target_ongoing_requests: float = Field(default=16.0, gt=0.0)

    @model_validator(mode="after")
    def _order(self) -> ReplicaConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self

    def serve_options(self) -> dict[str, Any]:
        """``Deployment.options`` for these settings."""
        if self.min_replicas == self.max_replicas:
            return {"num_replicas": self.max_replicas}
        return {
            "autoscaling_config": {
                "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
            }
        }


def _default_tiers() -> list[TierConfig]:
    return [
        TierConfig(
            name="small", model="openai/smollm2-135m-instruct", api_base="local", max_score=0.45
        ),
        TierConfig(name="large", model="keel-rules/planner", max_score=1.0),
    ]


# The Serve application the model router runs as: workers look it up by this name, so they
# never import the router (and litellm) merely to find one that is running.
ROUTER_APP = "keel-router"


class RouterConfig(_Section):
    tiers: list[TierConfig] = Field(default_factory=_default_tiers, min_length=1)
    models: dict[str, str] = Field(
        default_factory=dict, description="one-line overrides: tier name -> litellm model"
    )
    weights: ComplexityWeights = Field(default_factory=ComplexityWeights)
    route_by: Literal["content", "heuristic"] = Field(
        default="content",
        description="content: the shipped classifier reads each request (the heuristic "
        "decides when it cannot); heuristic: kind, length, tools and failures only",
    )
    num_retries: int = Field(default=1, ge=0, le=10)
    allowed_fails: int = Field(default=0, ge=0)
    cooldown_s: float = Field(default=30.0, ge=0.0)
    http_port: int = Field(default=8000, ge=1, le=65535)
    escalate_below_confidence: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="a classification less sure than this is asked again one tier up",
    )
    replicas: ReplicaConfig = Field(default_factory=ReplicaConfig)
    keys: dict[str, str] = Field(
        default_factory=dict,
        description="sha256(api key) -> principal for the HTTP endpoints; when any is set "
        "(as every cluster deployment must), a request without one is refused",
    )

    def uses_local_model(self) -> bool:
        return any(t.api_base == "local" for t in self.resolved_tiers())

    def resolved_tiers(self) -> list[TierConfig]:
        """Tiers with the one-line model overrides applied, checked for sense."""
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ConfigError("tier names must be unique", field="router.tiers")
        for name in self.models:
            if name not in names:
                raise ConfigError(f"no tier named {name!r}", field=f"router.models.{name}")
        scores = [t.max_score for t in self.tiers]
        if scores != sorted(scores) or scores[-1] < 1.0:
            raise ConfigError(
                "tiers go cheapest first with rising max_score, the last at 1.0",
                field="router.tiers",
            )
        out = []
        for t in self.tiers:
            if t.name in self.models:
                t = t.model_copy(update={"model": self.models[t.name], "api_base": None})
            out.append(t)
        return out

    def endpoint(self, tier: TierConfig) -> str | None:
        """Where a tier is reached; ``local`` is the embedded model on Serve's proxy."""
        if tier.api_base == "local":
            return f"http://127.0.0.1:{self.http_port}/local/v1"
        return tier.api_base


class WorkersConfig(_Section):
    """Replicas of each worker role; calls are spread over them."""

    planner: int = Field(default=1, ge=1, le=256)
    retriever: int = Field(default=1, ge=1, le=256)
    executor: int = Field(default=1, ge=1, le=256)
    validator: int = Field(default=1, ge=1, le=256)


class Budgets(_Section):
    """Limits on a run: the deployment's (``budgets`` in keel.yaml) and a run's own
    (``budgets`` in the API, ``--budget`` in the CLI), one model for both.

    Crossing one pauses the run for a person, saying which and by how much. Steps and tool
    calls are checked before they happen; model calls, cost and wall time as soon as they
    have been crossed. ``None`` is no limit. A run's own limits only count where it set
    them, and can only tighten the deployment's.
    """

    max_cost: float | None = Field(default=None, ge=0.0, description="model cost, in USD")
    max_model_calls: int | None = Field(default=None, ge=0)
    max_tool_calls: int | None = Field(default=None, ge=0)
    max_steps: int | None = Field(default=1000, ge=1)
    max_wall_s: float | None = Field(default=None, gt=0.0)
    max_rejections: int | None = Field(
        default=3, ge=0, description="rejected proposals before a person"
    )

    def own(self) -> dict[str, Any]:
        """The limits this run set itself, as stored with the run."""
        return self.model_dump(exclude_unset=True, exclude_none=True)

    def tightened(self, run: Budgets | None) -> Budgets:
        """These limits, lowered by a run's own: a run may ask for less, never more."""
        if run is None:
            return self
        merged: dict[str, Any] = self.model_dump()
        for name, value in run.own().items():
            current = merged.get(name)
            merged[name] = value if current is None else min(current, value)
        return Budgets.model_validate(merged)


class PolicyConfig(_Section):
    model: str | None = Field(default=None, description="Casbin model file (default: shipped)")
    policy: str | None = Field(
        default_factory=lambda: os.environ.get("KEEL_POLICY") or None,
        description="policy CSV (default: $KEEL_POLICY, else the shipped one)",
    )
    approve_below_confidence: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="below it, a write policy exempts from approval waits for a person after "
        "all, and one held anyway tells the person how unsure the model was",
    )


def _default_roots() -> list[str]:
    env = os.environ.get("KEEL_TOOL_ROOTS")
    return [r for r in env.split(os.pathsep) if r] if env else []


class SandboxConfig(_Section):
    """Where tools may act. Every run input declared ``ConfinedPath`` (the incident
    workflow's service directory, the demo's outbox) must lie under one of ``roots``; a
    sandboxed tool sees that one directory and nothing else of the host. Empty: the folders
    ``keel demo`` and ``keel eval`` prepare their services in (``<store>-demo`` and
    ``<store>-evals`` beside a local store, else ``.keel-demo`` and ``.keel-evals`` in the
    working directory), and ``<store>/outbox``. ``KEEL_TOOL_ROOTS`` (paths joined by ``:``)
    sets them from the environment."""

    roots: list[str] = Field(default_factory=_default_roots)


class TelemetryConfig(_Section):
    exporter: Literal["none", "console", "memory", "otlp"] = Field(
        default="none", description="where run spans go (memory: kept for tests)"
    )
    otlp_endpoint: str = Field(
        default="http://127.0.0.1:4318/v1/traces", description="OTLP over HTTP, traces path"
    )


class APIConfig(_Section):
    keys: dict[str, str] = Field(
        default_factory=dict, description="sha256(api key) -> principal; keys never stored"
    )
    workflows: list[str] = Field(
        default_factory=list,
        description="workflows the API may start, by name or module:attr (default: the "
        "bundled ones and those under `workflows`)",
    )
    rate_limit: str = Field(default="600/minute", description="requests per API key")
    refused_approval_limit: str = Field(
        default="10/minute", description="refused approvals per principal"
    )
    public_url: str = Field(
        default="",
        description="where clients reach Serve's HTTP (the A2A agent card names it); "
        "default http://127.0.0.1:<router.http_port>",
    )
    eval_report: str = Field(
        default="",
        description="a `keel eval --out` folder the console shows at /v1/runs/console/evals",
    )
    max_followers: int = Field(
        default=8, ge=1, le=10_000, description="open event streams per API key, per replica"
    )
    replicas: ReplicaConfig = Field(default_factory=ReplicaConfig)


class CLIConfig(_Section):
    users: dict[str, str] = Field(
        default_factory=dict,
        description="operating-system user -> principal; empty: everyone is `local`",
    )


class KeelConfig(_Section):
    storage: StorageConfig = Field(default_factory=StorageConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    workers: WorkersConfig = Field(default_factory=WorkersConfig)
    budgets: Budgets = Field(default_factory=Budgets)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    api: APIConfig = Field(default_factory=APIConfig)
    cli: CLIConfig = Field(default_factory=CLIConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    orchestrator: OrchestratorConfig = Field(default_factory=OrchestratorConfig)
    workflows: dict[str, str] = Field(
        default_factory=dict, description="extra workflow names -> module:attr"
    )

    def tool_roots(self) -> list[str]:
        """The directories tools may act on, absolute."""
        roots = list(self.sandbox.roots)
        url = self.storage_url()
        if not roots:
            roots = [str(self.workdir("demo")), str(self.workdir("evals"))]
            if "://" not in url:
                roots.append(f"{url}/outbox")
        return [str(Path(r).expanduser().resolve()) for r in roots]

    def workdir(self, purpose: Literal["demo", "evals"]) -> Path:
        """Where ``keel demo`` and ``keel eval`` prepare the services they break: beside a
        local store (so that each store has its own), else in the working directory."""
        url = self.storage_url()
        if "://" in url:
            return Path(f".keel-{purpose}").resolve()
        return Path(f"{url}-{purpose}")

    def storage_url(self) -> str:
        """The storage URL with a local path made absolute (actors run elsewhere)."""
        url = self.storage.url
        if "://" in url:
            return url
        return str(Path(url).expanduser().resolve())


def load_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> KeelConfig:
    """Read the config file if there is one, apply ``KEEL_*`` overrides, validate.

    Raises:
        ConfigError: naming the field and the reason.
    """
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    file = path or env.get("KEEL_CONFIG")
    if file is None and Path("keel.yaml").is_file():
        file = "keel.yaml"
    if file is not None:
        try:
            loaded = yaml.safe_load(Path(file).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read {file}: {exc.strerror}", field="config") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file} is not valid YAML: {exc}", field="config") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file} must hold a mapping", field="config")
        raw = loaded
    storage = dict(raw.get("storage") or {})
    if env.get("KEEL_STORAGE"):
        storage["url"] = env["KEEL_STORAGE"]
    if env.get("KEEL_STORAGE_OPTIONS"):
        try:
            storage["options"] = json.loads(env["KEEL_STORAGE_OPTIONS"])
        except ValueError as exc:
            raise ConfigError(f"not JSON: {exc}", field="KEEL_STORAGE_OPTIONS") from None
    if storage:
        raw["storage"] = storage
    if env.get("KEEL_RAY_ADDRESS"):
        raw["ray"] = {**(raw.get("ray") or {}), "address": env["KEEL_RAY_ADDRESS"]}
    try:
        return KeelConfig.model_validate(raw)
    except ValidationError as exc:
        field, msg = first_error(exc, default="config")
        raise ConfigError(msg, field=field) from None
