"""One frozen message per orchestrator call, so signatures can grow without breaking callers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from keel.config import KeelConfig


class _Msg(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StartRun(_Msg):
    workflow: str = Field(min_length=1, max_length=300, description="name or module:attr")
    goal: str = Field(default="", max_length=20_000)
    inputs: dict[str, JsonValue] = Field(default_factory=dict)
    principal: str = "local"
    run_id: str | None = None
    budgets: dict[str, JsonValue] | None = Field(
        default=None, description="Budgets: this run's own, tighter limits"
    )


class ResumeRun(_Msg):
    run_id: str
    by: str = "local"
    reason: str = Field(default="", max_length=2_000)
    effect: Literal["applied", "not_applied"] | None = None


class CancelRun(_Msg):
    run_id: str
    by: str = "local"
    reason: str = Field(default="", max_length=2_000)


class WatchRun(_Msg):
    run_id: str
    after_seq: int = 0
    timeout_s: float = Field(default=5.0, ge=0.0, le=60.0)


class OrchestratorSettings(_Msg):
    """What the orchestrator actor is built with; survives its restarts."""

    storage_url: str
    storage_options: dict[str, JsonValue] = Field(default_factory=dict)
    fsync: bool = True
    name: str = Field(default="orchestrator", description="the actor's name in namespace keel")
    shards: int = Field(default=1, ge=1, le=64, description="orchestrators sharing the runs")
    lease_ttl_s: float = Field(default=15.0, gt=0.0, description="how long a lease vouches")
    embedded: bool = Field(default=False, description="a local instance others may attach to")
    host_pid: int | None = Field(default=None, description="the process that started Ray")
    tool_roots: list[str] = Field(default_factory=list, description="where tools may act")
    max_concurrent_runs: int = Field(default=256, ge=1)
    node_num_cpus: float = Field(default=1.0, ge=0.0)
    sweep_interval_s: float = Field(default=5.0, gt=0.0)
    workers: dict[str, int] = Field(default_factory=dict, description="replicas per role")
    router: dict[str, JsonValue] = Field(default_factory=dict, description="RouterConfig")
    budgets: dict[str, JsonValue] = Field(default_factory=dict, description="Budgets")
    policy_model: str | None = None
    policy_file: str | None = None
    approve_below_confidence: float | None = None
    workflows: dict[str, str] = Field(default_factory=dict)
    tracing: Literal["none", "console", "memory", "otlp"] = "none"
    otlp_endpoint: str | None = None

    def node_env(self) -> dict[str, Any]:
        """What a node needs to reach this deployment's workers (``NodeContext.env``)."""
        return {
            "workers": dict(self.workers),
            "storage_url": self.storage_url,
            "storage_options": dict(self.storage_options),
            "router": dict(self.router),
            "policy_model": self.policy_model,
            "policy_file": self.policy_file,
            "tool_roots": list(self.tool_roots),
        }


class ApproveRun(_Msg):
    run_id: str
    principal: str = Field(min_length=1, max_length=200)
    approved: bool
    reason: str = Field(default="", max_length=2_000)


def orchestrator_settings(
    config: KeelConfig, *, host_pid: int | None = None
) -> OrchestratorSettings:
    """The orchestrator's settings for a deployment's configuration (``host_pid``: the
    process that started this local Ray, when one did)."""

    def absolute(path: str | None) -> str | None:
        return str(Path(path).expanduser().resolve()) if path else None

    return OrchestratorSettings(
        storage_url=config.storage_url(),
        storage_options=config.storage.options,
        fsync=config.storage.fsync,
        max_concurrent_runs=config.orchestrator.max_concurrent_runs,
        node_num_cpus=config.orchestrator.node_num_cpus,
        workflows=config.workflows,
        workers=config.workers.model_dump(),
        router=config.router.model_dump(mode="json"),
        budgets=config.budgets.model_dump(mode="json"),
        policy_model=absolute(config.policy.model),
        policy_file=absolute(config.policy.policy),
        approve_below_confidence=config.policy.approve_below_confidence,
        tracing=config.telemetry.exporter,
        otlp_endpoint=config.telemetry.otlp_endpoint,
        name=config.orchestrator.name,
        shards=config.orchestrator.shards,
        lease_ttl_s=config.orchestrator.lease_ttl_s,
        embedded=config.ray.address is None,
        host_pid=host_pid,
        tool_roots=config.tool_roots(),
    )
