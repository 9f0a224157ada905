"""Tenants kept apart on the runs API, tried over real HTTP on 127.0.0.1: each principal
sees only its own runs (unless a role grants more), nobody approves their own request,
refused approvals cannot grow a run's ledger, bodies are counted as they stream, no
workflow code is imported for a caller who may not start it, and errors do not describe
the storage. A fuzzer with two principals never crosses between them."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from ray import serve

from keel.client import Keel
from keel.config import APIConfig, KeelConfig, OrchestratorConfig, StorageConfig
from keel.server.runs_api import deploy_runs_api, hash_key
from tests.actors.conftest import stop_orchestrator

KEYS = {f"{who}-key": who for who in ("alice", "bob", "carol", "dave", "erin", "flood")}
MARKER = Path(os.environ.setdefault("KEEL_TEST_IMPORT_MARKER", "/tmp/keel-test-imported"))
GOOD = {"path": "count.json", "service": "checkout"}


@pytest.fixture(scope="module")
def api(serve_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:

    store = tmp_path_factory.mktemp("tenancy") / "store"
    config = KeelConfig(
        storage=StorageConfig(url=str(store), fsync=False),
        orchestrator=OrchestratorConfig(name="orch-tenancy", node_num_cpus=0.25),
        api=APIConfig(
            workflows=["demo", "tests.actors.workflows:restart"],
            rate_limit="60/minute",
            refused_approval_limit="3/minute",
        ),
    )
    deploy_runs_api(config.model_dump(mode="json"), {hash_key(k): p for k, p in KEYS.items()})
    yield f"http://127.0.0.1:{serve_port}/v1/runs", store
    serve.delete("keel-runs")
    stop_orchestrator(Keel(config))


def as_(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {who}-key"}


def start(url: str, who: str, outbox: Path, goal: str = "question") -> str:
    body = {"workflow": "demo", "goal": goal, "inputs": {"outbox": str(outbox)}}
    resp = httpx.post(url, json=body, headers=as_(who), timeout=60)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["run_id"])


def test_each_principal_sees_only_its_own_runs(api: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = api
    carols = start(url, "carol", tmp_path / "c", "carol's secret goal")
    erins = start(url, "erin", tmp_path / "e", "erin's secret goal")
    listed = httpx.get(url, headers=as_("carol"), timeout=30).json()["runs"]
    assert [r["run_id"] for r in listed] == [carols]
    assert "erin's secret goal" not in str(listed)
    for path in ("", "/events"):
        other = httpx.get(f"{url}/{erins}{path}", headers=as_("carol"), timeout=30)
        assert other.status_code == 404 and "erin" not in other.text
    # A role that grants read_any (a viewer) sees both.
    seen = {r["run_id"] for r in httpx.get(url, headers=as_("bob"), timeout=30).json()["runs"]}
    assert {carols, erins} <= seen


def waiting_run(url: str, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """alice starts a run whose write waits for approval; its id and state once it waits."""
    body = {
        "workflow": "tests.actors.workflows:restart",
        "inputs": {"dir": str(tmp_path), "proposal": GOOD},
    }
    run_id = httpx.post(url, json=body, headers=as_("alice"), timeout=60).json()["run_id"]
    deadline = time.monotonic() + 60
    while True:
        got = httpx.get(f"{url}/{run_id}", headers=as_("alice"), timeout=30)
        state: dict[str, Any] = got.json()["state"]
        if state["status"] == "awaiting_approval":
            return run_id, state
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_nobody_approves_their_own_request(api: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = api
    run_id, _ = waiting_run(url, tmp_path)
    own = httpx.post(f"{url}/{run_id}/approval", json={"approved": True}, headers=as_("alice"))
    assert own.status_code == 403 and "their own" in own.json()["detail"]
    other = httpx.post(f"{url}/{run_id}/approval", json={"approved": True}, headers=as_("dave"))
    assert other.status_code == 200, other.text


def test_refused_approvals_do_not_grow_the_ledger(api: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = api
    run_id, state = waiting_run(url, tmp_path)
    before = state["last_seq"]
    codes = [
        httpx.post(
            f"{url}/{run_id}/approval", json={"approved": True}, headers=as_("bob")
        ).status_code
        for _ in range(8)
    ]
    assert codes[:3] == [403, 403, 403] and set(codes[3:]) == {429}
    after = httpx.get(f"{url}/{run_id}", headers=as_("bob")).json()["state"]["last_seq"]
    assert after == before


def test_a_chunked_body_is_counted_as_it_arrives(api: tuple[str, Path]) -> None:
    url, _ = api

    def chunks() -> Iterator[bytes]:
        yield b'{"workflow": "demo", "goal": "'
        for _ in range(300):
            yield b"x" * 10_000
        yield b'"}'

    resp = httpx.post(
        url,
        content=chunks(),
        headers={**as_("alice"), "Content-Type": "application/json"},
        timeout=60,
    )
    assert resp.status_code == 413 and resp.json()["field"] == "body"


def test_no_workflow_code_runs_for_a_refused_caller(api: tuple[str, Path]) -> None:
    url, _ = api
    if MARKER.exists():
        MARKER.unlink()
    for who in ("alice", "bob"):
        body = {"workflow": "tests.security.import_marker:wf", "inputs": {}}
        resp = httpx.post(url, json=body, headers=as_(who), timeout=30)
        assert resp.status_code == 403, resp.text
    assert not MARKER.exists(), "the workflow module was imported for a refused caller"


def test_errors_do_not_describe_the_storage(api: tuple[str, Path]) -> None:
    url, store = api
    for path in ("/no-such-run", "/no-such-run/events", "/bad%20id"):
        resp = httpx.get(f"{url}{path}", headers=as_("alice"), timeout=30)
        assert resp.status_code in (400, 404)
        assert str(store) not in resp.text and "checkpoints" not in resp.text


def test_requests_are_rate_limited_per_key(api: tuple[str, Path]) -> None:
    url, _ = api
    codes = [httpx.get(url, headers=as_("flood"), timeout=30).status_code for _ in range(70)]
    assert codes[:50] == [200] * 50 and codes[-1] == 429
    assert httpx.get(url, headers=as_("carol"), timeout=30).status_code == 200  # others unaffected


def test_fuzzing_as_two_principals_never_crosses_between_them(
    api: tuple[str, Path], tmp_path: Path
) -> None:
    import schemathesis  # noqa: PLC0415

    url, _ = api
    mine = {who: start(url, who, tmp_path / who, f"{who} private") for who in ("carol", "erin")}
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    failures: list[str] = []
    requests = 0

    def probe(case: Any, who: str, other: str) -> None:
        nonlocal requests
        if "run_id" in (case.path_parameters or {}):
            case.path_parameters["run_id"] = mine[other]  # aim at the other's run
        resp = case.call(base_url=url, headers=as_(who), timeout=30)
        requests += 1
        if resp.status_code >= 500:
            failures.append(f"{case.method} {case.formatted_path} -> 5xx")
        if f"{other} private" in resp.text or (resp.status_code < 300 and mine[other] in resp.text):
            failures.append(f"{who} saw {other}'s run via {case.method} {case.path}")

    def fuzz(op: Any, who: str, other: str) -> None:
        @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def check(case: Any) -> None:
            probe(case, who, other)

        check()

    for operation in schema.get_all_operations():
        for who, other in (("carol", "erin"), ("erin", "carol")):
            fuzz(operation.ok(), who, other)
    assert not failures, failures[:5]
    assert requests >= 6 * 2 * 4
