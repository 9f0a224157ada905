"""A tool that misbehaves is stopped by the sandbox, and the run's ledger says why."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from keel.client import Keel
from keel.core.events import EffectResult, RunStatus
from keel.sandbox.bwrap import isolation
from tests.actors.conftest import make_keel, stop_orchestrator
from tests.conftest import Backend

pytestmark = pytest.mark.skipif(not isolation()[0], reason=isolation()[1])


@pytest.fixture(scope="module")
def keel(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keel]:
    """One deployment for the module: each test's run is its own, and what stops it is the
    tool's doing, not the deployment's."""
    client = make_keel(Backend("local", str(tmp_path_factory.mktemp("limits") / "store")))
    yield client
    stop_orchestrator(client)


@pytest.mark.parametrize(
    ("what", "why"),
    [
        ("network", "ConnectionRefusedError"),
        ("write_outside", "Read-only file system"),
        ("fork_bomb", "exit 3"),
        ("slow", "killed=timeout"),
    ],
)
def test_misbehaving_tool_is_stopped_and_recorded(keel: Keel, what: str, why: str) -> None:
    target = Path("/etc/keel-limits-test")  # outside the scratch: read-only in the sandbox
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        inputs = {"what": what, "port": srv.getsockname()[1], "target": str(target)}
        st = keel.start("tests.sandbox.limits_flow:wf", "", inputs)
        final = keel.watch(st.run_id, timeout_s=60)
    assert final.status == RunStatus.FAILED
    results = [e for e in keel.show(st.run_id).events if isinstance(e, EffectResult)]
    assert len(results) == 1 and not results[0].ok
    assert results[0].error is not None and why in results[0].error.message
    assert f"sandbox stopped {what}" in results[0].error.message
    assert not target.exists(), "the host must be unchanged"
