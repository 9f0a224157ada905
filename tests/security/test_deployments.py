"""The shipped deployments, read as an attacker would: Ray's token on every node, the
dashboard (whose Jobs API runs arbitrary code) never on a routable address, a network
policy around Ray's ports, and keys on every HTTP endpoint a cluster exposes."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml

from keel.config import KeelConfig, load_config
from keel.router import service

ROOT = Path(__file__).resolve().parents[2]


def kuberay() -> dict[str, dict[str, Any]]:
    docs = yaml.safe_load_all((ROOT / "deploy" / "rayservice.yaml").read_text())
    return {d["kind"]: d for d in docs}


def containers(service: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = service["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_every_ray_node_requires_the_token() -> None:
    for container in containers(kuberay()["RayService"]):
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token", container["name"]
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "keel-ray-auth"
    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    starts = [*cluster["head_start_ray_commands"], *cluster["worker_start_ray_commands"]]
    for command in starts:
        if "ray start" in command or "keel serve" in command:
            assert "RAY_AUTH_MODE=token" in command and "RAY_AUTH_TOKEN_PATH" in command


def test_the_dashboard_is_never_on_a_routable_address() -> None:
    service = kuberay()["RayService"]
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    ports = {p["containerPort"] for c in containers(service) for p in c.get("ports", [])}
    assert 8265 not in ports
    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert any("--dashboard-host=127.0.0.1" in c for c in cluster["head_start_ray_commands"])


def test_a_network_policy_keeps_rays_ports_to_rays_pods() -> None:
    policy = yaml.safe_load((ROOT / "deploy" / "networkpolicy.yaml").read_text())
    assert policy["kind"] == "NetworkPolicy" and policy["spec"]["policyTypes"] == ["Ingress"]
    rules = policy["spec"]["ingress"]
    # Unrestricted ports only for Ray's own pods; everyone else gets Serve's port alone.
    for rule in rules:
        peers = rule["from"]
        if "ports" not in rule:
            assert peers == [{"podSelector": {"matchLabels": {"ray.io/cluster": "keel"}}}]
        else:
            assert [p["port"] for p in rule["ports"]] == [8000]


def test_cluster_configs_put_keys_on_every_http_endpoint() -> None:
    configs = [
        load_config(ROOT / "deploy" / "keel.cluster.yaml"),
        KeelConfig.model_validate(yaml.safe_load(kuberay()["ConfigMap"]["data"]["keel.yaml"])),
    ]
    for config in configs:
        assert config.router.keys and config.api.keys


def test_the_routers_key_check_refuses_a_request_without_a_good_key() -> None:
    """The check every HTTP request to the router passes first, with keys set."""

    keys = {hashlib.sha256(b"good").hexdigest(): "ops"}
    service._authorised({}, None)  # the embedded default: no keys, loopback only
    for header in (None, "", "Bearer", "Bearer wrong", "good"):
        try:
            service._authorised(keys, header)
        except Exception as exc:
            assert getattr(exc, "status_code", None) == 401
        else:
            raise AssertionError(f"{header!r} got through")
    service._authorised(keys, "Bearer good")
