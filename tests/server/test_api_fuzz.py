"""The runs API fuzzed from its own OpenAPI document (schemathesis), over real HTTP on
127.0.0.1: no 5xx, and no run corrupted."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.fakes import runs_api


@pytest.fixture(scope="module")
def api_url(serve_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store = tmp_path_factory.mktemp("fuzz") / "store"
    # The fuzzer acts as bob, a viewer: it can probe every endpoint but never start a run
    # (whose tools would write wherever the random inputs point) or approve one.
    keys = {"fuzz-key": "bob", "setup-key": "alice"}
    with runs_api(serve_port, store, "fuzz", ["demo"], keys) as base:
        # One real run, so that reads and approvals have something to hit.
        outbox = str(store.parent / "outbox")
        body = {"workflow": "demo", "goal": "fuzz", "inputs": {"outbox": outbox}}
        headers = {"X-API-Key": "setup-key"}
        httpx.post(base, json=body, headers=headers, timeout=60).raise_for_status()
        yield base


def test_fuzz_from_openapi(api_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    schema.config.base_url = api_url  # type: ignore[attr-defined]
    failures: list[str] = []
    statuses: list[int] = []
    for operation in schema.get_all_operations():
        op = operation.ok()

        strategy = op.as_strategy()

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def check(case: schemathesis.Case) -> None:
            resp = case.call(base_url=api_url, headers={"X-API-Key": "fuzz-key"}, timeout=30)
            statuses.append(resp.status_code)
            if resp.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {resp.status_code}")

        check()
    assert not failures, failures[:5]
    operations = len(list(schema.get_all_operations()))
    assert operations == 6 and len(statuses) >= operations * 10, (operations, len(statuses))
    assert 200 in statuses and {400, 403, 404} & set(statuses)  # both paths exercised
    print(f"fuzzed {operations} operations with {len(statuses)} requests: {sorted(set(statuses))}")
    # No run corrupted: every stored run still loads and folds.
    runs = httpx.get(api_url, headers={"X-API-Key": "fuzz-key"}, params={"limit": 500}, timeout=30)
    for row in runs.json()["runs"]:
        got = httpx.get(f"{api_url}/{row['run_id']}", headers={"X-API-Key": "fuzz-key"}, timeout=30)
        assert got.status_code == 200 and not got.json()["warnings"]
