"""The incident demo end to end: a real service, the real small model, sandboxed tools."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from keel.client import Keel
from keel.config import KeelConfig, OrchestratorConfig, RouterConfig, StorageConfig
from keel.core.events import EffectResult, MemoryRecalled, RunStatus
from keel.examples import demo_service
from keel.examples.incident import RUNBOOKS, IncidentState, applied
from keel.sandbox.bwrap import isolation
from keel.storage.memory import MemoryStore
from keel.testing.chaos import ChaosOrchestrator
from tests.actors.conftest import stop_orchestrator
from tests.conftest import free_port

pytestmark = pytest.mark.skipif(not isolation()[0], reason=isolation()[1])
GOAL_TEXT = "The checkout service is failing its health checks. Diagnose it and mitigate."


@pytest.fixture(scope="module")
def keel(local_router: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keel]:
    """One deployment for the module. Each test's service is its own, and so are the
    episodes its runs recall (they are of that service)."""
    store = tmp_path_factory.mktemp("incident") / "store"
    client = Keel(
        KeelConfig(
            storage=StorageConfig(url=str(store), fsync=False),
            orchestrator=OrchestratorConfig(name=f"orch-{store.parent.name}", node_num_cpus=0.25),
            router=RouterConfig(http_port=local_router),
        ),
        orchestrator_class=ChaosOrchestrator,
    )
    memory = MemoryStore(client.store.store)
    for item in RUNBOOKS:
        memory.put(item)
    yield client
    stop_orchestrator(client)


@pytest.fixture
def service(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Path, int]]:
    root = tmp_path / "svc"
    demo_service.prepare(root, request.param)
    port = free_port()
    proc = demo_service.start(root, port)
    yield root, port
    demo_service.stop(proc)


def run_incident(keel: Keel, root: Path, port: int) -> Any:
    st = keel.start("incident", GOAL_TEXT, {"root": str(root), "port": port})
    state = keel.watch(st.run_id, timeout_s=180)
    assert state.status == RunStatus.AWAITING_APPROVAL, state.reason
    assert "restart_service" in state.reason
    keel.approve(st.run_id, principal="alice", reason="go ahead")
    return keel.watch(st.run_id, timeout_s=180)


@pytest.mark.parametrize("service", ["bad_config"], indirect=True)
def test_bad_config_is_mitigated(keel: Keel, service: tuple[Path, int]) -> None:
    root, port = service
    assert demo_service.health(port)[0] == 503
    final = run_incident(keel, root, port)
    assert final.status == RunStatus.SUCCEEDED, final.reason
    code, body = demo_service.health(port)  # the test asks the service itself
    assert code == 200 and body["status"] == "ok"
    # The agent called the restart once, with the runbook's setting, and then answered.
    ran = applied(IncidentState.model_validate(final.data))
    assert [(tool, args["config_action"]) for tool, args in ran] == [
        ("restart_service", "restore_last_good")
    ]
    assert final.data["answer"].startswith("done: ")
    # What the run recalled, with its scores, is in the ledger (replay answers from it).
    # The second retrieval asked the principal's own episodes of this service: none yet.
    recalled = [e for e in keel.show(final.run_id).events if isinstance(e, MemoryRecalled)]
    assert [(e.node, e.kind, e.namespace) for e in recalled] == [
        ("recall", "document", "shared"),
        ("recall", "episode", final.principal),
    ]
    assert recalled[0].items[0].id == "rb-bad-config" and recalled[0].items[0].score > 0
    assert [i.id for i in recalled[0].items] == final.data["runbooks"]
    assert recalled[1].items == [] and f"root={root}" in recalled[1].tags


@pytest.mark.parametrize("service", ["corrupt_data"], indirect=True)
def test_unhelpful_mitigation_is_rolled_back(keel: Keel, service: tuple[Path, int]) -> None:
    root, port = service
    config_before = (root / "service.json").read_bytes()
    final = run_incident(keel, root, port)
    assert final.status == RunStatus.NEEDS_HUMAN
    assert "did not improve health" in final.reason and "rolled back" in final.reason
    # The action did change the config; the rollback put it back byte for byte.
    result = next(m["content"] for m in final.data["messages"] if m["role"] == "tool")
    assert json.loads(result)["config"] != final.data["health_before"]["config"]
    assert (root / "service.json").read_bytes() == config_before
    assert demo_service.health(port)[0] == 503
    restarts = (root / "service.log").read_text().count("restart requested")
    applied_before = len(list((root / "applied").iterdir()))

    # A second run on the same service recalls the first one's episode, and does not
    # repeat the restart that did not help: it hands back to a person at once, asking
    # no approval, and the service's own log shows no second restart.
    second = keel.start("incident", GOAL_TEXT, {"root": str(root), "port": port})
    again = keel.watch(second.run_id, timeout_s=180)
    assert again.status == RunStatus.NEEDS_HUMAN, again.reason
    assert final.run_id in again.reason and "not repeated" in again.reason
    assert (root / "service.log").read_text().count("restart requested") == restarts
    assert len(list((root / "applied").iterdir())) == applied_before
    assert again.step < final.step
    assert any(final.run_id in line for line in again.data["earlier"])


@pytest.mark.parametrize("point", ["after_intent", "after_effect"])
@pytest.mark.parametrize("service", ["bad_config"], indirect=True)
def test_crash_around_mitigation_applies_it_once(
    keel: Keel, service: tuple[Path, int], point: str
) -> None:
    root, port = service
    ray.get(keel.orchestrator().arm_fault.remote(point, "mitigate.call"))
    final = run_incident(keel, root, port)
    assert final.status == RunStatus.SUCCEEDED, final.reason
    restarts = (root / "service.log").read_text().count("restart requested")
    assert restarts == 1, "the restart must happen exactly once"
    assert len(list((root / "applied").iterdir())) == 1
    if point == "after_effect":
        events = keel.show(final.run_id).events
        assert any(isinstance(e, EffectResult) and e.reconciled for e in events)
