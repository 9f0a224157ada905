"""The typed handles a node calls its workers through, in-process: during a replay they
answer from the ledger with the response model their method declares, and an answer of
any other type is refused rather than handed to the node."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from keel.actors import workers as workers_module
from keel.actors.replay import RECORDED, Recording, ReplayUnavailable
from keel.actors.worker_messages import (
    ClassifyRequest,
    ClassifyResponse,
    PlanRequest,
    PlanResponse,
    RetrieveRequest,
    ToolSpec,
)
from keel.actors.workers import Workers, workers
from keel.core.events import ModelCalled
from keel.core.nodes import NodeContext
from keel.errors import InputError
from tests.ledger import model_called

CTX = NodeContext(run_id="r", workflow="w", node="n", step=1, attempt=1, goal="", inputs={})


def recorded(response: str) -> ModelCalled:
    return model_called(node="n", tier="small", routed_tier="small", response=response)


@pytest.fixture
def replaying() -> Any:
    def use(*responses: str) -> None:
        RECORDED.set(Recording(calls=[recorded(r) for r in responses]))

    token = RECORDED.set(None)
    yield use
    RECORDED.reset(token)


def test_each_role_answers_with_its_declared_model(replaying: Any) -> None:
    replaying('{"label": "bad_config"}')
    label = workers(CTX).planner.classify(ClassifyRequest(text="x", labels=["bad_config", "b"]))
    assert isinstance(label, ClassifyResponse) and label.label == "bad_config"

    replaying('{"tool": "restart", "args": {"service": "checkout"}}')
    spec = ToolSpec(name="restart", description="", parameters={"type": "object"})
    plan = workers(CTX).planner.plan(PlanRequest(goal="g", tools=[spec]))
    assert isinstance(plan, PlanResponse) and plan.proposal is not None
    assert plan.proposal.tool == "restart" and plan.worker == "planner-0"


def test_an_async_node_awaits_the_same_recorded_answers(replaying: Any) -> None:
    replaying('{"label": "bad_config"}')
    ask = ClassifyRequest(text="x", labels=["bad_config", "b"])
    label = asyncio.run(workers(CTX).planner.aclassify(ask))
    assert isinstance(label, ClassifyResponse) and label.label == "bad_config"
    with pytest.raises(ReplayUnavailable, match=r"retriever\.retrieve"):
        asyncio.run(workers(CTX).retriever.aretrieve(RetrieveRequest(query="q")))


def test_what_the_ledger_does_not_record_is_not_made_up(replaying: Any) -> None:
    replaying('{"label": "a"}')
    with pytest.raises(ReplayUnavailable, match=r"retriever\.retrieve"):
        workers(CTX).retriever.retrieve(RetrieveRequest(query="q"))


def test_an_answer_of_another_type_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    class Confused:
        def call_sync(self, method: str, msg: Any) -> Any:
            return {"label": "not a model"}

        async def call(self, method: str, msg: Any) -> Any:
            return self.call_sync(method, msg)

    monkeypatch.setattr(workers_module, "pool", lambda role, env: Confused())
    with pytest.raises(TypeError, match="dict, not ClassifyResponse"):
        Workers({}).planner.classify(ClassifyRequest(text="x", labels=["a", "b"]))
    with pytest.raises(TypeError, match="dict, not ClassifyResponse"):
        asyncio.run(Workers({}).planner.aclassify(ClassifyRequest(text="x", labels=["a", "b"])))


def test_a_pool_is_found_again_by_its_settings_object(monkeypatch: pytest.MonkeyPatch) -> None:
    """An orchestrator hands every node the same settings: the pool is remembered by that
    object, and settings equal in content still share one pool; other settings get their own."""

    class Stub:
        def __init__(self, role: str, cls: Any, args: Any, *, size: int, scope: str) -> None:
            self.scope = scope

    digests: list[object] = []
    real = workers_module._scope
    monkeypatch.setattr(workers_module, "WorkerPool", Stub)
    monkeypatch.setattr(workers_module, "_POOLS", {})
    monkeypatch.setattr(workers_module, "_BY_ENV", {})
    monkeypatch.setattr(workers_module, "_scope", lambda args: digests.append(args) or real(args))
    env = {"router": {"http_port": 8000}}
    first = workers_module.pool("planner", env)
    assert workers_module.pool("planner", env) is first and len(digests) == 1
    assert workers_module.pool("planner", dict(env)) is first and len(digests) == 2
    other = workers_module.pool("planner", {"router": {"http_port": 8001}})
    assert other is not first and other.scope != first.scope
    with pytest.raises(InputError, match="unknown worker role"):
        workers_module.pool("janitor", env)
