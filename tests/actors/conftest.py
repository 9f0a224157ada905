from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from keel.client import Keel
from keel.config import KeelConfig, OrchestratorConfig, PolicyConfig, StorageConfig
from keel.testing.chaos import ChaosOrchestrator
from tests.conftest import TEST_POLICY, Backend
from tests.fakes import stop_deployment


def make_keel(backend: Backend) -> Keel:
    """A client whose orchestrator can be told to crash at a fault point (``arm_fault``)."""
    return Keel(
        KeelConfig(
            storage=StorageConfig(url=backend.url, options=backend.options, fsync=False),
            orchestrator=OrchestratorConfig(
                name=f"orch-{uuid.uuid4().hex[:8]}", node_num_cpus=0.25
            ),
            policy=PolicyConfig(policy=TEST_POLICY),
        ),
        orchestrator_class=ChaosOrchestrator,
    )


def stop_orchestrator(keel: Keel) -> None:
    stop_deployment(keel.config)


@pytest.fixture(scope="module")
def keel(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keel]:
    """A client with an orchestrator actor of its own over local storage, one per test
    module (S3 is covered where a test asks for ``s3_backend``, and in-process in the fast
    tier). Each test's runs are its own; one that crashes the orchestrator leaves the next
    test a restarted one, as Ray would leave it to any later run."""
    client = make_keel(Backend("local", str(tmp_path_factory.mktemp("actors") / "store")))
    yield client
    stop_orchestrator(client)
