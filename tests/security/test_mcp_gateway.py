"""Keel's MCP server is a governed endpoint, not a back door: API key, policy, a recorded
run per call, approvals honoured. Tried with the official MCP client over loopback."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
import uvicorn
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from keel.client import Keel
from keel.server.mcp_gateway import governed_app
from tests.actors.conftest import make_keel, stop_orchestrator
from tests.conftest import Backend
from tests.fakes import free_port

MARKERS = Path(os.environ.setdefault("KEEL_TEST_GATEWAY_MARKERS", "/tmp/keel-gateway-markers"))
REF = "tests.security.mcp_registry:gateway"
KEYS = {"alice-key": "alice", "bob-key": "bob"}


@pytest.fixture
def gateway(ray_session: None, tmp_path: Path) -> Iterator[tuple[str, Keel]]:

    if (MARKERS / "wire_money").exists():
        (MARKERS / "wire_money").unlink()
    keel = make_keel(Backend("local", str(tmp_path / "store")))
    hashed = {hashlib.sha256(k.encode()).hexdigest(): p for k, p in KEYS.items()}
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            governed_app(keel, REF, hashed, wait_s=30),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/mcp", keel
    server.should_exit = True
    thread.join(timeout=10)
    stop_orchestrator(keel)


def call(url: str, key: str, tool: str, args: dict[str, Any]) -> tuple[bool, str]:

    async def go() -> tuple[bool, str]:

        client = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60)
        async with (
            streamable_http_client(url, http_client=client) as streams,
            ClientSession(streams[0], streams[1]) as session,
        ):
            await session.initialize()
            result = await session.call_tool(tool, args)
            text = " ".join(getattr(c, "text", "") for c in result.content)
            return bool(result.is_error), text

    return asyncio.run(go())


def test_no_key_no_tools(gateway: tuple[str, Keel]) -> None:
    url, _ = gateway
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = httpx.post(
            url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=headers
        )
        assert response.status_code == 401


def test_a_call_is_a_recorded_run_of_its_principal(gateway: tuple[str, Keel]) -> None:
    url, keel = gateway
    failed, text = call(url, "alice-key", "echo", {"text": "hello"})
    assert not failed and "hello" in text
    runs = keel.runs(workflow="mcp-ops")
    assert len(runs) == 1
    view = keel.show(runs[0].run_id)
    assert view.state.principal == "alice" and view.state.status == "succeeded"
    assert view.state.data["result"] == {"echo": "hello"}


def test_a_write_waits_for_a_person_and_then_runs_once(gateway: tuple[str, Keel]) -> None:
    url, keel = gateway
    failed, text = call(url, "alice-key", "wire_money", {"to": "mallory", "amount": 500})
    assert failed and "held for a person's approval" in text
    assert not (MARKERS / "wire_money").exists(), "the write ran before anyone approved it"
    run_id = keel.runs(workflow="mcp-ops", status="awaiting_approval")[0].run_id
    final = keel.approve(run_id, principal="local", reason="checked with finance")
    final = keel.watch(run_id, timeout_s=60)
    assert final.status == "succeeded"
    assert len((MARKERS / "wire_money").read_text().splitlines()) == 1


def test_a_principal_without_the_right_is_refused(gateway: tuple[str, Keel]) -> None:
    url, keel = gateway
    failed, text = call(url, "bob-key", "echo", {"text": "hi"})
    assert failed and "may not start" in text
    assert keel.runs(workflow="mcp-ops") == []
