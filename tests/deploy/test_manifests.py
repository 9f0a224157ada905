"""Every deployment file is checked by the tool that reads it: cluster.yaml by Ray's own
cluster-config schema (what `ray up` runs first), the Serve configs by Ray Serve's schema,
the KubeRay manifest by the RayService schema, and every keel.yaml by Keel's config."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve.schema import ServeDeploySchema

from keel.config import KeelConfig, load_config

ROOT = Path(__file__).resolve().parents[2]


def cluster_config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    return loaded


def launcher_check(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does with the file before it touches a machine."""
    prepared: dict[str, Any] = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_is_a_valid_ray_cluster_config() -> None:
    prepared = launcher_check(cluster_config())
    assert prepared["provider"]["type"] == "local"
    setup = " ".join(prepared["setup_commands"])
    assert "pip install -c constraints.txt -e ." in setup  # Keel on head and workers
    head = " ".join(prepared["head_start_ray_commands"])
    assert "ray start --head" in head and "keel serve" in head
    assert "KEEL_CONFIG=deploy/keel.cluster.yaml" in head
    assert "--address=$RAY_HEAD_IP:6379" in " ".join(prepared["worker_start_ray_commands"])


@pytest.mark.parametrize(
    "breakage",
    [
        {"setup_comands": []},  # a typo
        {"provider": {"head_ip": "x"}},  # no provider type
        {"max_workers": "two"},
    ],
)
def test_a_broken_cluster_yaml_is_caught(breakage: dict[str, Any]) -> None:
    config = {**cluster_config(), **breakage}
    with pytest.raises(Exception):  # noqa: B017 - Ray raises jsonschema or its own errors
        launcher_check(config)


def test_cluster_settings_are_a_valid_keel_config() -> None:
    config = load_config(ROOT / "deploy" / "keel.cluster.yaml")
    assert config.storage_url().startswith("s3://")
    assert config.ray.address == "auto"
    assert config.workers.executor > 1 and config.workers.planner > 1


def serve_apps(spec: dict[str, Any]) -> ServeDeploySchema:
    return ServeDeploySchema.model_validate(spec)


def manifest() -> list[dict[str, Any]]:
    return list(yaml.safe_load_all((ROOT / "deploy" / "rayservice.yaml").read_text()))


def test_kuberay_manifest_validates() -> None:
    schema = json.loads((ROOT / "deploy" / "rayservice.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    docs = {d["kind"]: d for d in manifest()}
    assert set(docs) == {"ConfigMap", "RayService"}
    service = docs["RayService"]
    jsonschema.validate(service, schema)
    # The Serve applications inside, with Serve's own schema; each import path builds.
    serve = serve_apps(yaml.safe_load(service["spec"]["serveConfigV2"]))
    assert {a.name for a in serve.applications} == {
        "keel-local-model",
        "keel-router",
        "keel-runs",
        "keel-a2a",
        "keel-memory",
    }
    deployments = {d.name: d for a in serve.applications for d in a.deployments}
    assert all(deployments[n].autoscaling_config for n in ("ModelRouter", "RunsAPI"))
    assert deployments["A2AFacade"].num_replicas == 1  # its task records are in memory
    # keel.yaml from the ConfigMap is a valid Keel config.
    keel_yaml = yaml.safe_load(docs["ConfigMap"]["data"]["keel.yaml"])
    KeelConfig.model_validate(keel_yaml)
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    mounts = {
        m["mountPath"]
        for c in cluster["headGroupSpec"]["template"]["spec"]["containers"]
        for m in c["volumeMounts"]
    }
    env = {
        e["name"]: e.get("value")
        for c in cluster["headGroupSpec"]["template"]["spec"]["containers"]
        for e in c["env"]
    }
    assert Path(str(env["KEEL_CONFIG"])).parent.as_posix() in mounts


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (["spec", "rayClusterConfig", "headGroupSpec", "rayStartParams", "num-cpus"], 2),
        (["spec", "rayClusterConfig", "workerGroupSpecs", 0, "replica"], 2),
        (["spec", "rayClusterConfig", "workerGroupSpecs", 0, "replicas"], "two"),
        (["kind"], "RayCluster"),
        (["spec", "serveConfigV2"], {"applications": []}),
    ],
)
def test_kuberay_schema_catches_mistakes(path: list[Any], value: Any) -> None:
    schema = json.loads((ROOT / "deploy" / "rayservice.schema.json").read_text())
    service = next(d for d in manifest() if d["kind"] == "RayService")
    node = service
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(service, schema)
