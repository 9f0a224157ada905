"""The engine in one process, without Ray: the fast tier's harness.

A "process" here is a ``RunEngine`` over a real local store with the in-process runner.
Its crash is ``keel.testing.faults.Crash`` raised at an armed fault point; ``abandon``
then stops everything the dead process was doing without releasing its lease, and a new
engine under the same name plays the restarted orchestrator.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from keel.config import Budgets
from keel.core.registry import load_workflow
from keel.policy.engine import PolicyEngine
from keel.runtime.engine import RunEngine
from keel.runtime.inline import InlineNodeRunner
from keel.storage.local import LocalStore
from keel.storage.runs import RunStore
from keel.testing.faults import ChaosHooks
from tests.conftest import TEST_POLICY, Backend


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return RunStore(LocalStore(tmp_path / "store", fsync=False))


@pytest.fixture
def s3_store(s3_backend: Backend) -> RunStore:
    """A run store in a fresh bucket of the moto S3 server (a real process, no Ray)."""
    return RunStore(s3_backend.open())


EngineFactory = Callable[..., RunEngine]


@pytest.fixture
async def engines(store: RunStore) -> AsyncIterator[EngineFactory]:
    """Makes engines over the test's store (or ``store=``); every one still open is closed
    afterwards."""
    made: list[RunEngine] = []
    default = store

    def make(
        *,
        store: RunStore = default,
        owner: str = "orch",
        hooks: ChaosHooks | None = None,
        budgets: Budgets | None = None,
        **kw: Any,
    ) -> RunEngine:
        engine = RunEngine(
            store,
            InlineNodeRunner(),
            load_workflow,
            owner=owner,
            hooks=hooks,
            budgets=budgets,
            policy=PolicyEngine(None, TEST_POLICY),
            **kw,
        )
        made.append(engine)
        return engine

    yield make
    for engine in made:
        await engine.close()


async def abandon(engine: RunEngine) -> None:
    """The process is gone: its tasks stop where they are and its lease is not released
    (the next incarnation under the same name moves to the next epoch)."""
    await engine.close(release=False)
