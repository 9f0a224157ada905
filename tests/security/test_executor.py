"""The executor trusts nobody: called directly, as anything holding a handle to it could,
it finds tools in its own registry, takes the role from the node, and wants a person's
approval to be in the run's ledger, not in the message."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from keel.actors.worker_messages import ExecuteRequest
from keel.actors.workers import pool
from keel.errors import InputError, PolicyError
from tests.actors.conftest import make_keel
from tests.actors.workflows import counter
from tests.conftest import Backend
from tests.fakes import stop_deployment

RESTART = "tests.actors.workflows:restart"


@pytest.fixture(scope="module")
def executor(ray_session: None, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The executor of one deployment, asked directly (no orchestrator in between); stopped
    with the module, like any deployment's."""
    keel = make_keel(Backend("local", str(tmp_path_factory.mktemp("executor") / "store")))
    yield pool("executor", keel.settings().node_env())
    stop_deployment(keel.config)


async def test_a_write_needing_approval_is_refused_without_one_in_the_ledger(
    executor,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    args = {"path": str(tmp_path / "count.json"), "service": "checkout"}
    msg = ExecuteRequest(
        workflow_ref=RESTART, node="act", tool="restart_service", args=args, key="r-1/0/act/1"
    )
    with pytest.raises(PolicyError) as info:
        await executor.call("execute", msg)
    assert "approve" in str(info.value)
    assert counter(tmp_path / "count.json") == 0


@pytest.mark.parametrize(
    ("ref", "node", "tool"),
    [
        ("tests.actors.workflows:restart", "act", "drop_everything"),
        ("tests.actors.workflows:restart", "propose", "restart_service"),
        ("os:system", "act", "restart_service"),
    ],
)
async def test_only_tools_its_registry_declares_run(
    executor,
    ref: str,
    node: str,
    tool: str,  # type: ignore[no-untyped-def]
) -> None:
    msg = ExecuteRequest(workflow_ref=ref, node=node, tool=tool, args={}, key="r-1/0/act/1")
    with pytest.raises(InputError):
        await executor.call("execute", msg)


def test_a_tool_object_cannot_be_sent() -> None:

    with pytest.raises(ValidationError):
        ExecuteRequest(
            workflow_ref=RESTART,
            node="act",
            tool=object(),
            args={},
            key="r/0/a/1",  # type: ignore[arg-type]
        )
