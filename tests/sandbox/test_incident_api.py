"""The demo run driven over the runs API on 127.0.0.1: started by HTTP, its ledger followed
as server-sent events until it waits for approval, refused for a principal that may not
approve, approved by one that may; then its spans match its ledger and replay says
``identical``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from ray import serve

from keel.actors.replay import replay
from keel.client import Keel
from keel.config import (
    KeelConfig,
    OrchestratorConfig,
    RouterConfig,
    StorageConfig,
    TelemetryConfig,
)
from keel.core.events import EffectResult, ModelCalled, NodeCompleted, PolicyDecided
from keel.core.registry import load_workflow
from keel.examples import demo_service
from keel.examples.incident import RUNBOOKS
from keel.policy.engine import PolicyEngine
from keel.sandbox.bwrap import isolation
from keel.server.runs_api import deploy_runs_api, hash_key
from keel.storage.memory import MemoryStore
from tests.actors.conftest import stop_orchestrator
from tests.conftest import free_port

pytestmark = pytest.mark.skipif(not isolation()[0], reason=isolation()[1])
KEYS = {hash_key("alice-key"): "alice", hash_key("bob-key"): "bob", hash_key("dave-key"): "dave"}


@pytest.fixture
def stack(local_router: int, tmp_path: Path) -> Iterator[tuple[str, Keel, Path, int]]:

    config = KeelConfig(
        storage=StorageConfig(url=str(tmp_path / "store"), fsync=False),
        orchestrator=OrchestratorConfig(name=f"orch-{tmp_path.name}", node_num_cpus=0.25),
        router=RouterConfig(http_port=local_router),
        telemetry=TelemetryConfig(exporter="memory"),
    )
    keel = Keel(config)
    for item in RUNBOOKS:
        MemoryStore(keel.store.store).put(item)
    deploy_runs_api(config.model_dump(mode="json"), KEYS)
    root = tmp_path / "svc"
    demo_service.prepare(root, "bad_config")
    port = free_port()
    proc = demo_service.start(root, port)
    yield f"http://127.0.0.1:{local_router}/v1/runs", keel, root, port
    demo_service.stop(proc)
    stop_orchestrator(keel)
    serve.delete("keel-runs")


def sse_until_paused(url: str) -> list[dict[str, Any]]:
    events = []
    with httpx.stream("GET", url, headers={"X-API-Key": "alice-key"}, timeout=180) as s:
        for line in s.iter_lines():
            if line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
                events.append(data)
                if data.get("type") == "run_paused" or ("status" in data and "type" not in data):
                    break
    return events


def test_demo_run_over_the_api(stack: tuple[str, Keel, Path, int]) -> None:
    api, keel, root, port = stack
    body = {
        "workflow": "incident",
        "goal": "The checkout service is failing its health checks.",
        "inputs": {"root": str(root), "port": port},
    }
    created = httpx.post(api, json=body, headers={"X-API-Key": "alice-key"}, timeout=180)
    assert created.status_code == 201, created.text
    run_id = created.json()["run_id"]

    events = sse_until_paused(f"{api}/{run_id}/events?follow=true")
    assert events[-1]["type"] == "run_paused" and events[-1]["status"] == "awaiting_approval"

    refused = httpx.post(
        f"{api}/{run_id}/approval", json={"approved": True}, headers={"X-API-Key": "bob-key"},
        timeout=30,
    )  # fmt: skip
    assert refused.status_code == 403 and refused.json()["field"] == "principal"
    state = httpx.get(f"{api}/{run_id}", headers={"X-API-Key": "alice-key"}, timeout=30).json()
    assert state["state"]["status"] == "awaiting_approval"

    ok = httpx.post(
        f"{api}/{run_id}/approval",
        json={"approved": True, "reason": "incident channel"},
        headers={"X-API-Key": "dave-key"},
        timeout=30,
    )  # fmt: skip  (four eyes: alice started it, dave approves)
    assert ok.status_code == 200, ok.text
    deadline = time.monotonic() + 180
    while True:
        state = httpx.get(f"{api}/{run_id}", headers={"X-API-Key": "alice-key"}, timeout=30).json()
        if state["state"]["status"] != "running" or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert state["state"]["status"] == "succeeded", state
    assert demo_service.health(port)[0] == 200

    # Spans match the ledger one to one.
    ledger = keel.show(run_id).events
    traced = [
        e
        for e in ledger
        if isinstance(e, NodeCompleted | ModelCalled | PolicyDecided | EffectResult)
    ]
    spans = [
        s for s in ray.get(keel.orchestrator().spans.remote())
        if s["trace_id"] == traced[0].trace_id
    ]  # fmt: skip
    assert sorted(s["span_id"] for s in spans) == sorted(str(e.span_id) for e in traced)

    # Replay calls nothing and finds the run identical.
    report = replay(ledger, load_workflow("keel.examples.incident:workflow"), PolicyEngine())
    assert report.identical, report.divergence
