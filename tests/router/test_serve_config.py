"""The Serve config file in the repo is one Ray Serve itself accepts, and every import
path in it builds an application."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml
from ray.serve.schema import ServeDeploySchema

ROOT = Path(__file__).resolve().parents[2]


def test_serve_config_validates_and_builds() -> None:
    spec = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(spec)
    assert schema.http_options.host == "127.0.0.1"
    names = {app.name: app.route_prefix for app in schema.applications}
    assert names == {"keel-local-model": "/local", "keel-router": "/", "keel-runs": "/v1/runs"}
    for app in schema.applications:
        module, _, attr = app.import_path.rpartition(":")
        built = getattr(importlib.import_module(module), attr)(dict(app.args or {}))
        assert type(built).__name__ == "Application"
