"""The runs API end to end over real HTTP on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.actors.workflows import counter
from tests.fakes import runs_api

KEYS = {"alice-key": "alice", "bob-key": "bob", "dave-key": "dave"}
GOOD = {"path": "count.json", "service": "checkout"}


@pytest.fixture(scope="module")
def api(serve_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store = tmp_path_factory.mktemp("api") / "store"
    # The last one is allowed but broken (no such module): a start names it, 400.
    workflows = ["demo", "tests.actors.workflows:restart", "tests.no_such_module:wf"]
    with runs_api(serve_port, store, "api", workflows, KEYS) as url:
        yield url


def as_(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {who}-key"}


def wait_for(url: str, who: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        state: dict[str, Any] = httpx.get(url, headers=as_(who), timeout=30).json()["state"]
        if state["status"] == status or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


def test_start_follow_approve_over_http(api: str, tmp_path: Path) -> None:
    body = {
        "workflow": "tests.actors.workflows:restart",
        "goal": "restart checkout",
        "inputs": {"dir": str(tmp_path), "proposal": GOOD},
    }
    created = httpx.post(api, json=body, headers=as_("alice"), timeout=60)
    assert created.status_code == 201, created.text
    run_id = created.json()["run_id"]
    waiting = wait_for(f"{api}/{run_id}", "alice", "awaiting_approval")
    assert waiting["status"] == "awaiting_approval"

    # The ledger streams as server-sent events up to the pause.
    with httpx.stream(
        "GET", f"{api}/{run_id}/events?follow=true", headers=as_("alice"), timeout=60
    ) as s:
        kinds = [
            line.removeprefix("event: ") for line in s.iter_lines() if line.startswith("event: ")
        ]
    assert kinds[0] == "run_created" and "run_paused" in kinds and kinds[-1] == "end"

    # A client that reconnects with Last-Event-ID gets only what came after it.
    with httpx.stream(
        "GET",
        f"{api}/{run_id}/events?follow=true",
        headers={**as_("alice"), "Last-Event-ID": "3"},
        timeout=60,
    ) as s:
        ids = [int(line.removeprefix("id: ")) for line in s.iter_lines() if line.startswith("id: ")]
    assert ids and min(ids) == 4 and ids == sorted(ids)
    bad = httpx.get(
        f"{api}/{run_id}/events?follow=true",
        headers={**as_("alice"), "Last-Event-ID": "yesterday"},
        timeout=30,
    )
    assert bad.status_code == 400 and bad.json()["field"] == "Last-Event-ID"

    refused = httpx.post(
        f"{api}/{run_id}/approval", json={"approved": True}, headers=as_("bob"), timeout=30
    )
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["field"] == "principal"
    assert wait_for(f"{api}/{run_id}", "alice", "awaiting_approval")["status"] == (
        "awaiting_approval"
    )
    assert counter(tmp_path / "count.json") == 0

    own = httpx.post(
        f"{api}/{run_id}/approval", json={"approved": True}, headers=as_("alice"), timeout=30
    )
    assert own.status_code == 403 and "their own" in own.json()["detail"]  # four eyes
    ok = httpx.post(
        f"{api}/{run_id}/approval",
        json={"approved": True, "reason": "change window"},
        headers=as_("dave"),
        timeout=30,
    )
    assert ok.status_code == 200, ok.text
    assert wait_for(f"{api}/{run_id}", "alice", "succeeded")["status"] == "succeeded"
    assert counter(tmp_path / "count.json") == 1
    listed = httpx.get(api, headers=as_("bob"), params={"status": "succeeded"}, timeout=30).json()
    assert [r["run_id"] for r in listed["runs"]] == [run_id]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "field"),
    [
        ("post", "", {"workflow": "demo"}, {}, 401, "authorization"),
        ("post", "", {"workflow": "demo"}, {"X-API-Key": "wrong"}, 401, "authorization"),
        ("post", "", {"goal": "x"}, as_("alice"), 400, "workflow"),
        ("post", "", {"workflow": "nope"}, as_("alice"), 403, "workflow"),
        ("post", "", {"workflow": "tests.no_such_module:wf"}, as_("alice"), 400, "workflow"),
        ("post", "", {"workflow": "demo", "inputs": {"x": 1}}, as_("alice"), 400, "inputs.x"),
        ("post", "", {"workflow": "demo", "extra": 1}, as_("alice"), 400, "extra"),
        (
            "post",
            "",
            {"workflow": "demo", "budgets": {"max_steps": 0}},
            as_("alice"),
            400,
            "budgets.max_steps",
        ),
        (
            "post",
            "",
            {"workflow": "demo", "budgets": {"max_x": 1}},
            as_("alice"),
            400,
            "budgets.max_x",
        ),
        ("post", "", {"workflow": "demo"}, as_("bob"), 403, "principal"),
        ("get", "/no-such-run", None, as_("alice"), 404, "run_id"),
        ("get", "?limit=0", None, as_("alice"), 400, "limit"),
        ("post", "/no-such-run/approval", {"approved": True}, as_("alice"), 404, "run_id"),
    ],
)
def test_errors_are_problem_json_naming_the_field(
    api: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    headers: dict[str, str],
    status: int,
    field: str,
) -> None:
    resp = httpx.request(method, f"{api}{path}", json=body, headers=headers, timeout=30)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["field"] == field
    if body is not None and body.get("workflow") == "tests.no_such_module:wf":
        assert "ModuleNotFoundError" in resp.json()["detail"]  # what is broken, in one line


def test_body_size_is_limited(api: str) -> None:
    huge = {"workflow": "demo", "goal": "x" * 1_100_000}
    resp = httpx.post(api, json=huge, headers=as_("alice"), timeout=30)
    assert resp.status_code == 413 and resp.json()["field"] == "body"


def test_a_run_budget_given_at_start_stops_the_run(api: str, tmp_path: Path) -> None:
    body = {
        "workflow": "demo",
        "goal": "checkout is down",
        "inputs": {"outbox": str(tmp_path / "outbox")},
        "budgets": {"max_tool_calls": 1},
    }
    created = httpx.post(api, json=body, headers=as_("alice"), timeout=60)
    assert created.status_code == 201, created.text
    assert created.json()["budgets"] == {"max_tool_calls": 1}
    state = wait_for(f"{api}/{created.json()['run_id']}", "alice", "needs_human")
    assert state["status"] == "needs_human", state
    assert "max_tool_calls" in state["reason"]
    assert len(list((tmp_path / "outbox").glob("*.json"))) == 1  # the page, not the note
