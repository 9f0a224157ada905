"""Configuration: ``keel.yaml`` (or ``$KEEL_CONFIG``), then environment overrides.

Every field has a default that runs the embedded stack: local Ray, ``./.keel`` storage.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from keel.errors import ConfigError


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
    max_concurrent_runs: int = Field(default=256, ge=1, le=100_000)
    node_num_cpus: float = Field(default=1.0, ge=0.0)


class KeelConfig(_Section):
    storage: StorageConfig = Field(default_factory=StorageConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    orchestrator: OrchestratorConfig = Field(default_factory=OrchestratorConfig)
    workflows: dict[str, str] = Field(
        default_factory=dict, description="extra workflow names -> module:attr"
    )

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
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(err["msg"], field=loc or "config") from None
