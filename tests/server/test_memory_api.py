"""The memory API over real HTTP on 127.0.0.1: add, list, search and forget per namespace
under the shipped roles, and bad input answered with problem+json naming the field, with
nothing written."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fakes import runs_api

KEYS = {"alice-key": "alice", "bob-key": "bob", "carol-key": "carol"}


@pytest.fixture(scope="module")
def api(serve_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store = tmp_path_factory.mktemp("memory-api") / "store"
    with runs_api(serve_port, store, "memory-api", ["demo"], KEYS, memory=True):
        yield f"http://127.0.0.1:{serve_port}/v1/memory"


def as_(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {who}-key"}


def test_add_list_search_forget(api: str) -> None:
    runbook = {"id": "rb-restart", "text": "restore the last good config, then restart"}
    added = httpx.post(f"{api}/shared/items", json=runbook, headers=as_("alice"), timeout=30)
    assert added.status_code == 201, added.text
    assert added.json()["namespace"] == "shared"
    mine = {"id": "note", "text": "restart checkout at night only"}
    own = httpx.post(f"{api}/carol/items", json=mine, headers=as_("carol"), timeout=30)
    assert own.status_code == 201, own.text  # her own namespace needs no rule

    listed = httpx.get(f"{api}/shared/items", headers=as_("bob"), timeout=30).json()
    assert [i["id"] for i in listed["items"]] == ["rb-restart"]
    found = httpx.get(
        f"{api}/search",
        params={"q": "restart config", "namespace": ["shared", "carol"]},
        headers=as_("carol"),
        timeout=30,
    ).json()["results"]
    assert {r["id"] for r in found} == {"rb-restart", "note"} and all(r["score"] > 0 for r in found)

    gone = httpx.delete(f"{api}/shared/items/document/rb-restart", headers=as_("alice"), timeout=30)
    assert gone.status_code == 204
    assert httpx.get(f"{api}/shared/items", headers=as_("bob"), timeout=30).json()["items"] == []


@pytest.mark.parametrize(
    ("method", "path", "who", "body", "status", "field"),
    [
        ("post", "/shared/items", None, {"id": "x", "text": "y"}, 401, "authorization"),
        ("post", "/shared/items", "alice", {"id": "bad id", "text": "y"}, 400, "id"),
        ("post", "/shared/items", "alice", {"id": "x"}, 400, "text"),
        ("post", "/shared/items", "alice", {"id": "x", "text": "y", "kind": "z"}, 400, "kind"),
        ("post", "/shared/items", "alice", {"id": "x", "text": "y", "extra": 1}, 400, "extra"),
        ("post", "/shared/items", "bob", {"id": "x", "text": "y"}, 403, "namespace"),
        ("post", "/shared/items", "carol", {"id": "x", "text": "y"}, 403, "namespace"),
        ("get", "/alice/items", "carol", None, 403, "namespace"),
        ("get", "/search?q=x&k=0", "alice", None, 400, "k"),
        ("get", "/search", "alice", None, 400, "query"),
        ("delete", "/shared/items/document/nope", "alice", None, 404, "id"),
    ],
)
def test_refusals_are_problem_json_naming_the_field(
    api: str,
    method: str,
    path: str,
    who: str | None,
    body: dict[str, Any] | None,
    status: int,
    field: str,
) -> None:
    headers = as_(who) if who else {}
    before = httpx.get(f"{api}/shared/items", headers=as_("alice"), timeout=30).json()
    resp = httpx.request(method, f"{api}{path}", json=body, headers=headers, timeout=30)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["field"] == field
    assert httpx.get(f"{api}/shared/items", headers=as_("alice"), timeout=30).json() == before
