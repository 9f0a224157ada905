"""The sandbox seam: run one command in isolation, with limits, and say what happened.

This module imports no backend. ``sandbox.bwrap`` is the OS-isolated backend (Linux
namespaces through bubblewrap); ``sandbox.bwrap.isolation()`` says whether it can run here.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

KillReason = Literal["timeout", "memory", "cpu", "signal"]


class SandboxSpec(BaseModel):
    """What to run and within which walls."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    argv: list[str] = Field(min_length=1)
    workdir: str | None = Field(default=None, description="the one host directory it sees")
    writable: bool = Field(default=False, description="the workdir is bind-mounted read-write")
    read_paths: list[str] = Field(
        default_factory=list, description="other host paths it may read (read-only)"
    )
    connect: list[str] = Field(
        default_factory=list,
        description="HOST:PORT destinations it may reach over TCP (none: no network at all); "
        "inside, each is reached at the same address, through a proxy",
        max_length=16,
    )
    timeout_s: float = Field(default=30.0, gt=0.0, le=3600.0)
    memory_mb: int = Field(default=512, ge=16, le=65_536)
    cpu_s: int = Field(default=30, ge=1, le=3600)
    max_procs: int = Field(default=64, ge=1, le=4096)
    env: dict[str, str] = Field(default_factory=dict)
    stdin: str = ""
    output_cap: int = Field(default=65_536, ge=1024, le=16_777_216)

    @field_validator("connect")
    @classmethod
    def _destinations(cls, value: list[str]) -> list[str]:
        for dest in value:
            host, _, port = dest.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{dest!r} is not HOST:PORT")
        return value


class SandboxResult(BaseModel):
    """What came out. Output beyond ``output_cap`` is cut and ``truncated`` says so."""

    model_config = ConfigDict(frozen=True)

    exit_code: int
    stdout: str
    stderr: str
    truncated: bool = False
    duration_s: float
    killed: KillReason | None = None
    isolated: bool

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.killed is None


@runtime_checkable
class Sandbox(Protocol):
    name: str

    @property
    def isolated(self) -> bool:
        """True when the backend really confines the command."""
        ...

    def run(self, spec: SandboxSpec) -> SandboxResult: ...
