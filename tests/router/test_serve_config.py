"""The Serve config file in the repo is one Ray Serve itself accepts, and every import
path in it builds an application."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from keel.config import load_config
from keel.errors import ConfigError
from keel.router.service import build as build_router
from keel.server.runs_api import build as build_api

ROOT = Path(__file__).resolve().parents[2]


def test_serve_config_validates_and_builds() -> None:
    spec = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(spec)
    assert schema.http_options.host == "127.0.0.1"
    names = {app.name: app.route_prefix for app in schema.applications}
    assert names == {
        "keel-local-model": "/local",
        "keel-router": "/",
        "keel-runs": "/v1/runs",
        "keel-a2a": "/a2a",
        "keel-memory": "/v1/memory",
    }
    for app in schema.applications:
        module, _, attr = app.import_path.rpartition(":")
        built = getattr(importlib.import_module(module), attr)(dict(app.args or {}))
        assert type(built).__name__ == "Application"


def test_replicas_follow_keel_yaml(tmp_path: Path) -> None:

    config = tmp_path / "keel.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "router": {"replicas": {"min_replicas": 1, "max_replicas": 3}},
                "api": {"replicas": {"min_replicas": 2, "max_replicas": 2}},
            }
        )
    )
    router = build_router({"config": str(config)})._bound_deployment
    scaling = router._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas) == (1, 3)
    assert build_api({"config": str(config)})._bound_deployment.num_replicas == 2


def test_replica_bounds_are_checked(tmp_path: Path) -> None:

    config = tmp_path / "keel.yaml"
    config.write_text(
        yaml.safe_dump({"router": {"replicas": {"min_replicas": 4, "max_replicas": 2}}})
    )
    with pytest.raises(ConfigError) as info:
        load_config(str(config))
    assert info.value.field == "router.replicas"
    assert "min_replicas must not exceed max_replicas" in str(info.value)
