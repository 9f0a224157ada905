"""The A2A facade, driven by the official SDK's own client over real HTTP on 127.0.0.1:
discover the card, start a run with ``message/send``, read it with ``tasks/get``, stream an
approval-gated run that a person approves through the runs API, and the refusals, each
naming what is wrong. Effects are counted by the tools' own outputs, not the ledger."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from a2a.client import A2ACardResolver, ClientConfig, create_client
from a2a.helpers import get_message_text, new_data_part, new_text_part
from a2a.types import GetTaskRequest, Message, Role, SendMessageRequest, TaskState
from a2a.utils.errors import TaskNotFoundError
from google.protobuf.json_format import MessageToDict

from keel.storage import open_store
from keel.storage.runs import RunStore
from tests.actors.workflows import counter
from tests.fakes import runs_api

pytestmark = pytest.mark.ray

KEYS = {"alice-key": "alice", "bob-key": "bob", "dave-key": "dave"}
WORKFLOWS = ["demo", "tests.actors.workflows:restart"]


@pytest.fixture(scope="module")
def served(serve_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    store = tmp_path_factory.mktemp("a2a") / "store"
    with runs_api(serve_port, store, "a2a", WORKFLOWS, KEYS, a2a=True):
        yield {"base": f"http://127.0.0.1:{serve_port}", "store": store}


def ask(text: str, data: dict[str, Any] | None) -> SendMessageRequest:
    parts = [new_text_part(text)] + ([new_data_part(data)] if data is not None else [])
    message = Message(message_id=uuid.uuid4().hex, role=Role.ROLE_USER, parts=parts)
    return SendMessageRequest(message=message)


async def client_for(base: str, who: str, *, streaming: bool) -> tuple[Any, httpx.AsyncClient]:
    http = httpx.AsyncClient(headers={"Authorization": f"Bearer {who}-key"}, timeout=60)
    card = await A2ACardResolver(http, f"{base}/a2a").get_agent_card()
    config = ClientConfig(httpx_client=http, streaming=streaming)
    return await create_client(card, client_config=config), http


async def send(base: str, who: str, request: SendMessageRequest, streaming: bool) -> list[Any]:
    client, http = await client_for(base, who, streaming=streaming)
    try:
        return [r async for r in client.send_message(request)]
    finally:
        await http.aclose()


def state_of(responses: list[Any]) -> tuple[str, int]:
    """The task id and final state the responses end with."""
    task_id, state = "", TaskState.TASK_STATE_UNSPECIFIED
    for r in responses:
        if r.HasField("task"):
            task_id, state = r.task.id, r.task.status.state
        elif r.HasField("status_update"):
            task_id, state = r.status_update.task_id, r.status_update.status.state
    return task_id, state


def test_the_agent_card_lists_the_offered_workflows(served: dict[str, Any]) -> None:
    card = httpx.get(f"{served['base']}/a2a/.well-known/agent-card.json", timeout=30)
    assert card.status_code == 200  # discovery needs no key; the card says one is needed
    body = card.json()
    assert sorted(s["id"] for s in body["skills"]) == sorted(WORKFLOWS)
    assert body["capabilities"]["streaming"] is True
    assert body["securitySchemes"]["apiKey"]["httpAuthSecurityScheme"]["scheme"] == "bearer"
    assert body["supportedInterfaces"][0]["url"] == f"{served['base']}/a2a/"


def test_message_send_runs_the_workflow_and_tasks_get_reads_it(
    served: dict[str, Any], tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox"
    request = ask("checkout is down", {"workflow": "demo", "inputs": {"outbox": str(outbox)}})

    async def go() -> tuple[list[Any], Any]:
        responses = await send(served["base"], "alice", request, streaming=False)
        task_id, _ = state_of(responses)
        client, http = await client_for(served["base"], "alice", streaming=False)
        try:
            task = await client.get_task(GetTaskRequest(id=task_id))
        finally:
            await http.aclose()
        # Another principal's task is not there for bob, as one that does not exist.
        other, http = await client_for(served["base"], "bob", streaming=False)
        try:
            with pytest.raises(TaskNotFoundError):
                await other.get_task(GetTaskRequest(id=task_id))
        finally:
            await http.aclose()
        return responses, task

    responses, task = asyncio.run(go())
    assert task.status.state == TaskState.TASK_STATE_COMPLETED, MessageToDict(task)
    run = MessageToDict(task.artifacts[0])["parts"][0]["data"]
    assert run["run_id"] == f"a2a-{task.id}" and run["status"] == "succeeded"
    assert run["principal"] == "alice"
    # The tool's own output: a page and a note, once each.
    assert len(list(outbox.glob("*.json"))) == 2
    # The same run in Keel's store, under the task's id.
    assert f"a2a-{task.id}" in RunStore(open_store(str(served["store"]))).list_run_ids()
    assert responses  # the non-streaming call answered with the task


def test_streaming_waits_for_a_person_and_goes_on_when_approved(
    served: dict[str, Any], tmp_path: Path
) -> None:
    folder = tmp_path / "svc"
    folder.mkdir()
    inputs = {"dir": str(folder), "proposal": {"path": "count.json", "service": "checkout"}}
    request = ask(
        "restart checkout", {"workflow": "tests.actors.workflows:restart", "inputs": inputs}
    )
    base = served["base"]

    async def go() -> list[tuple[int, str]]:
        client, http = await client_for(base, "alice", streaming=True)
        seen: list[tuple[int, str]] = []
        try:
            async for r in client.send_message(request):
                if not r.HasField("status_update"):
                    continue
                status = r.status_update.status
                seen.append((status.state, get_message_text(status.message)))
                if status.state == TaskState.TASK_STATE_AUTH_REQUIRED:
                    assert counter(folder / "count.json") == 0  # nothing ran before approval
                    run_id = f"a2a-{r.status_update.task_id}"
                    async with httpx.AsyncClient(timeout=30) as api:
                        ok = await api.post(
                            f"{base}/v1/runs/{run_id}/approval",
                            json={"approved": True, "reason": "over A2A, by a person"},
                            headers={"Authorization": "Bearer dave-key"},
                        )
                    assert ok.status_code == 200, ok.text
        finally:
            await http.aclose()
        return seen

    seen = asyncio.run(go())
    states = [s for s, _ in seen]
    assert TaskState.TASK_STATE_WORKING in states
    assert TaskState.TASK_STATE_AUTH_REQUIRED in states
    assert states[-1] == TaskState.TASK_STATE_COMPLETED, seen
    texts = "\n".join(t for _, t in seen)
    assert "approved by dave over A2A, by a person" in texts
    assert counter(folder / "count.json") == 1


@pytest.mark.parametrize(
    ("data", "who", "says"),
    [
        (None, "alice", "workflow: a data part"),
        ({"workflow": "nope"}, "alice", "workflow: workflow 'nope' is not offered"),
        ({"workflow": "demo", "inputs": {"x": 1}}, "alice", "inputs.x"),
        ({"workflow": "demo", "inputs": []}, "alice", "inputs: must be an object"),
        ({"workflow": "demo"}, "bob", "principal: bob may not start runs of demo"),
    ],
)
def test_refusals_name_the_field_and_start_nothing(
    served: dict[str, Any], data: dict[str, Any] | None, who: str, says: str
) -> None:
    before = set(RunStore(open_store(str(served["store"]))).list_run_ids())
    responses = asyncio.run(send(served["base"], who, ask("anything", data), streaming=False))
    _, state = state_of(responses)
    assert state == TaskState.TASK_STATE_REJECTED
    said = [
        get_message_text(
            r.task.status.message if r.HasField("task") else r.status_update.status.message
        )
        for r in responses
    ]
    assert any(says in s for s in said), said
    assert set(RunStore(open_store(str(served["store"]))).list_run_ids()) == before


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
def test_calls_without_a_valid_key_are_401(served: dict[str, Any], headers: dict[str, str]) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "x"}}
    resp = httpx.post(f"{served['base']}/a2a/", json=body, headers=headers, timeout=30)
    assert resp.status_code == 401 and resp.json()["field"] == "authorization"
