"""MCP tools in the registry: imported from a real MCP server process on 127.0.0.1 and
governed by validation and policy exactly like native tools; and Keel's own tools served
over MCP."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keel.client import Keel
from keel.core.events import PolicyDecided, ProposalRejected, RunStatus
from keel.sandbox.mcp import MCPTools
from tests.actors.conftest import make_keel, stop_orchestrator
from tests.conftest import Backend

ROOT = Path(__file__).resolve().parents[2]
URL = os.environ["KEEL_TEST_MCP_URL"]
MARKERS = Path(os.environ["KEEL_TEST_MCP_MARKERS"])


@pytest.fixture(scope="module")
def mcp_server() -> Iterator[str]:
    port = URL.rsplit(":", 1)[1].split("/")[0]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.sandbox.mcp_server", port, str(MARKERS)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            MCPTools(URL).load()
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("MCP server did not start") from None
            time.sleep(0.2)
    yield URL
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def deployment(
    ray_session: None, tmp_path_factory: pytest.TempPathFactory, mcp_server: str
) -> Iterator[Keel]:
    """One deployment for the module; each test's run is its own."""
    client = make_keel(Backend("local", str(tmp_path_factory.mktemp("mcp") / "store")))
    yield client
    stop_orchestrator(client)


@pytest.fixture
def keel(deployment: Keel) -> Keel:
    """The module's deployment, with the MCP server's record of calls emptied."""
    for marker in MARKERS.glob("*"):
        marker.unlink()
    return deployment


def test_server_tools_appear_in_the_registry(mcp_server: str) -> None:
    tools = MCPTools(mcp_server).load()
    assert sorted(tools) == ["drop_database", "read_status"]
    # The server marks read_status read-only; that is its claim, not Keel's: only the tools
    # Keel's side allow-lists are reads.
    assert tools["read_status"].action == "write" and tools["drop_database"].action == "write"
    trusted = MCPTools(mcp_server, read_only=["read_status"]).load()
    assert trusted["read_status"].action == "read" and trusted["drop_database"].action == "write"
    assert tools["read_status"].parameters["required"] == ["service"]


def run(keel: Keel, proposal: dict[str, Any]) -> Any:
    st = keel.start("tests.actors.workflows:mcp_flow", "", {"proposal": proposal})
    return keel.watch(st.run_id, timeout_s=60), keel.show(st.run_id).events


def test_denied_mcp_tool_is_refused_by_policy(keel: Keel) -> None:
    final, events = run(keel, {"tool": "drop_database", "args": {"name": "orders"}})
    assert final.status == RunStatus.FAILED
    decision = next(e for e in events if isinstance(e, PolicyDecided))
    assert (decision.subject, decision.object, decision.effect) == (
        "diagnose",
        "tool:drop_database",
        "deny",
    )
    assert not (MARKERS / "drop_database").exists(), "the MCP tool must never have been called"


def test_allowed_mcp_tool_runs(keel: Keel) -> None:
    final, _ = run(keel, {"tool": "read_status", "args": {"service": "checkout"}})
    assert final.status == RunStatus.SUCCEEDED, final.reason
    assert final.data["result"] == {"service": "checkout", "status": "ok"}
    assert (MARKERS / "read_status").read_text() == "checkout\n"


def test_malformed_mcp_arguments_are_rejected(keel: Keel) -> None:
    final, events = run(keel, {"tool": "read_status", "args": {"service": 5, "x": 1}})
    assert final.status == RunStatus.FAILED
    rejected = next(e for e in events if isinstance(e, ProposalRejected))
    assert "args.service" in {e["field"] for e in rejected.errors}
    assert not (MARKERS / "read_status").exists()
