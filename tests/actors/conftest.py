from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture
def keel(ray_session: None, tmp_path: Path) -> Iterator[Keel]:
    """A client with its own orchestrator actor over the test's own local storage (S3 is
    covered where a test asks for ``s3_backend``, and in-process in the fast tier)."""
    client = make_keel(Backend("local", str(tmp_path / "store")))
    yield client
    stop_orchestrator(client)
