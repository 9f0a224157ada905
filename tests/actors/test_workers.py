"""Workers as Ray actors, coordinated by the orchestrator, every model call through the
router on Serve (real HTTP on 127.0.0.1) and real litellm."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from ray import serve

from keel.actors.messages import orchestrator_settings
from keel.actors.pool import WorkerPool
from keel.actors.replay import replay
from keel.actors.retriever import rank
from keel.actors.validator import ValidatorWorker, check
from keel.actors.worker_messages import ToolSpec, ValidateRequest
from keel.actors.workers import worker_names
from keel.client import Keel
from keel.config import KeelConfig, OrchestratorConfig, StorageConfig
from keel.core.events import ModelCalled, NodeCompleted, NodeFailed, RunStatus
from keel.core.registry import load_workflow
from keel.policy.engine import PolicyEngine
from keel.router.service import APP_NAME
from keel.storage.memory import MemoryItem, MemoryStore
from tests.actors.conftest import stop_orchestrator
from tests.actors.workflows import TOOLS
from tests.conftest import Backend
from tests.fakes import Scripted, script_triage, two_tier_config

TRIAGE = "tests.actors.workflows:triage"
ATRIAGE = "tests.actors.workflows:atriage"


def events_of(keel: Keel, run_id: str) -> list[object]:
    return list(keel.show(run_id).events)


@pytest.fixture(scope="module")
def router_settings(request: pytest.FixtureRequest) -> dict[str, object]:
    """Router settings a test passes as its indirect parameter (none by default)."""
    return dict(getattr(request, "param", {}))


@pytest.fixture(scope="module")
def deployment(
    serve_port: int,
    scripted_server: Scripted,
    router_settings: dict[str, object],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Keel]:
    """One deployment per module and router settings, its router tiers both on the scripted
    provider; each test's runs are its own."""
    router = two_tier_config(scripted_server.base).model_copy(
        update={"http_port": serve_port, **router_settings}
    )
    store = tmp_path_factory.mktemp("workers") / "store"
    keel = Keel(
        KeelConfig(
            storage=StorageConfig(url=str(store), fsync=False),
            orchestrator=OrchestratorConfig(name=f"orch-{store.parent.name}", node_num_cpus=0.25),
            router=router,
        )
    )
    memory = MemoryStore(Backend("local", str(store)).open())
    memory.put(
        MemoryItem(
            id="rb-config",
            kind="document",
            title="Bad config rollback",
            text="When a bad config change breaks a service, restore the last good config.",
        )
    )
    memory.put(MemoryItem(id="rb-disk", kind="document", title="Disk full", text="Free space."))
    yield keel
    stop_orchestrator(keel)


@pytest.fixture
def scripted_keel(deployment: Keel, scripted_router: Scripted) -> tuple[Keel, Scripted]:
    """The module's deployment, and the scripted provider reset for this test."""
    return deployment, scripted_router


def test_async_nodes_await_the_workers_on_the_orchestrators_own_loop(
    scripted_keel: tuple[Keel, Scripted], tmp_path: Path
) -> None:
    keel, scripted = scripted_keel
    script_triage(scripted)
    where = tmp_path / "where"
    st = keel.start(ATRIAGE, "checkout broke after a bad config change", {"where": str(where)})
    final = keel.watch(st.run_id, timeout_s=120)
    assert final.status == RunStatus.SUCCEEDED, final.error
    assert where.read_text() == keel.config.orchestrator.name, "a node ran as a Ray task"
    assert final.data["label"] == "bad_config" and final.data["runbooks"][0] == "rb-config"
    assert final.data["proposal"]["tool"] == "restore_config" and final.data["valid"] is True
    events = keel.show(st.run_id).events
    calls = [e for e in events if isinstance(e, ModelCalled)]
    assert [(c.node, c.tier) for c in calls] == [("classify", "small"), ("plan", "large")]
    assert all(c.worker.startswith("keel-planner-") for c in calls)
    # Replayed from the ledger, the async nodes take the recorded answers and call nothing.
    before = scripted.calls()
    report = replay(events, load_workflow(ATRIAGE), PolicyEngine())
    assert report.identical and report.steps == 4
    assert scripted.calls() == before


def test_a_client_looks_the_router_up_once_however_many_runs_it_starts(
    scripted_keel: tuple[Keel, Scripted], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each start of a model workflow asks the client for the router; only the first may
    ask Serve's controller (a blocking call, one thread at a time), not every run."""
    keel, scripted = scripted_keel
    script_triage(scripted)
    lookups: list[str] = []
    real = serve.get_app_handle

    def counted(name: str, *args: object, **kwargs: object) -> object:
        lookups.append(name)
        return real(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(serve, "get_app_handle", counted)
    client = Keel(keel.config)  # a new client of the same deployment, as `keel batch` is
    started = [client.start(TRIAGE, f"bad config on checkout {i}") for i in range(3)]
    for st in started:
        assert client.watch(st.run_id, timeout_s=120).status == RunStatus.SUCCEEDED
    assert lookups == [APP_NAME]


@pytest.mark.parametrize("workflow", [TRIAGE, ATRIAGE], ids=["task node", "async node"])
def test_a_workers_error_is_recorded_as_its_own(
    scripted_keel: tuple[Keel, Scripted], workflow: str
) -> None:
    keel, scripted = scripted_keel
    for model in ("small-model", "large-model"):
        scripted.script(model, reply='{"label": "not one of them"}')
    st = keel.start(workflow, "checkout broke after a bad config change")
    final = keel.watch(st.run_id, timeout_s=120)
    assert final.status == RunStatus.FAILED
    failed = [e for e in keel.show(st.run_id).events if isinstance(e, NodeFailed)]
    assert [(f.node, f.attempt) for f in failed] == [("classify", 1), ("classify", 2)]
    # The planner's own error, not Ray's wrapper around it: its type, code and retryability.
    assert {(f.error.type, f.error.code, f.error.retryable) for f in failed} == {
        ("RouterError", "router", True)
    }, failed
    assert "no tier produced a valid label" in failed[0].error.message


def test_run_records_worker_and_tier_of_every_call(scripted_keel: tuple[Keel, Scripted]) -> None:
    keel, scripted = scripted_keel
    scripted.script("small-model", reply='{"label": "bad_config"}', usage=[30, 6])
    scripted.script(
        "large-model",
        reply='{"tool": "restore_config", "args": {"service": "checkout"}}',
        usage=[200, 20],
        logprobs={"restore_config": -0.5},
    )
    st = keel.start(TRIAGE, "checkout broke after a bad config change")
    final = keel.watch(st.run_id, timeout_s=120)
    assert final.status == RunStatus.SUCCEEDED, final.error
    assert final.data["label"] == "bad_config"
    assert final.data["runbooks"][0] == "rb-config"
    recall = next(
        e for e in events_of(keel, st.run_id) if isinstance(e, NodeCompleted) and e.node == "recall"
    )
    assert recall.worker.startswith("keel-retriever-")
    assert final.data["proposal"]["tool"] == "restore_config" and final.data["valid"] is True

    events = keel.show(st.run_id).events
    calls = [e for e in events if isinstance(e, ModelCalled)]
    assert [(c.node, c.tier) for c in calls] == [("classify", "small"), ("plan", "large")]
    # How sure each answer was: of its label, of the tool it chose (the tokens that spell it).
    assert [c.confidence for c in calls] == [1.0, pytest.approx(math.exp(-0.5))]
    assert all(c.worker.startswith("keel-planner-") for c in calls)
    workers = {e.node: e.worker for e in events if isinstance(e, NodeCompleted)}
    # The deployment can name its own workers (to stop them with it).
    env = orchestrator_settings(keel.config).node_env()
    assert workers["recall"] in worker_names(env, ("retriever",))
    assert workers["check"] in worker_names(env, ("validator",))
    assert {c.worker for c in calls} <= set(worker_names(env, ("planner",)))
    # Tokens and cost per call add up to the run's totals.
    assert final.usage.model_calls == 2
    assert final.usage.prompt_tokens == 230 and final.usage.completion_tokens == 26
    assert final.usage.cost == pytest.approx(sum(c.cost for c in calls))
    assert final.usage.cost == pytest.approx(30 * 1e-6 + 6 * 2e-6 + 200 * 1e-5 + 20 * 3e-5)


def test_invalid_small_answer_escalates_and_ledger_says_so(
    scripted_keel: tuple[Keel, Scripted],
) -> None:
    keel, scripted = scripted_keel
    scripted.script("small-model", reply="I think it is a config problem")
    scripted.script("large-model", reply='{"label": "bad_config"}')
    st = keel.start(TRIAGE, "checkout broke after a bad config change")
    final = keel.watch(st.run_id, timeout_s=120)
    assert final.status == RunStatus.SUCCEEDED, final.error
    calls = [e for e in keel.show(st.run_id).events if isinstance(e, ModelCalled)]
    classify = [c for c in calls if c.node == "classify"]
    assert [(c.tier, c.escalated_from) for c in classify] == [("small", None), ("large", "small")]
    assert final.data["label"] == "bad_config"


@pytest.mark.parametrize("router_settings", [{"escalate_below_confidence": 0.6}], indirect=True)
def test_unsure_small_answer_escalates_with_its_confidence_in_the_ledger(
    scripted_keel: tuple[Keel, Scripted],
) -> None:
    keel, scripted = scripted_keel
    # A valid label the small model is unsure of: p(disk_full) = e^-1.6 = 0.20 < 0.6.
    scripted.script("small-model", reply='{"label": "disk_full"}', logprobs={"disk_full": -1.6})
    scripted.script("large-model", reply='{"label": "bad_config"}')
    st = keel.start(TRIAGE, "checkout broke after a bad config change")
    final = keel.watch(st.run_id, timeout_s=120)
    assert final.status == RunStatus.SUCCEEDED, final.error
    assert scripted.last()["small-model"]["logprobs"] is True  # asked of the provider
    calls = [e for e in keel.show(st.run_id).events if isinstance(e, ModelCalled)]
    small, large = [c for c in calls if c.node == "classify"]
    assert (small.tier, small.escalated_from, small.confidence_floor) == ("small", None, 0.6)
    assert small.confidence == pytest.approx(0.2019, abs=1e-3)
    # the scripted large tier reports every token certain
    assert (large.tier, large.escalated_from, large.confidence) == ("large", "small", 1.0)
    assert final.data["label"] == "bad_config"


def test_killed_worker_is_replaced_and_run_completes(
    scripted_keel: tuple[Keel, Scripted], tmp_path: Path
) -> None:
    keel, scripted = scripted_keel
    scripted.script("small-model", reply='{"label": "bad_config"}')
    scripted.script(
        "large-model",
        reply='{"tool": "restore_config", "args": {"service": "checkout"}}',
        delay_s=2.5,
    )
    gate = tmp_path / "gate"
    st = keel.start(TRIAGE, "bad config on checkout", {"gate": str(gate)})
    deadline = time.monotonic() + 60
    while keel.show(st.run_id).state.next_node != "plan":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    gate.touch()
    # Kill the planners once the provider has the call (the plan node's task may still be
    # starting when the gate opens, on a busy machine): the call is then in flight.
    while scripted.calls().get("large-model", 0) < 1:
        assert time.monotonic() < deadline, "the plan call never reached the provider"
        time.sleep(0.05)
    planners = [
        ray.get_actor(a["name"], namespace="keel")
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == "keel" and a["name"].startswith("keel-planner-")
    ]
    assert planners
    for planner in planners:
        ray.kill(planner, no_restart=False)
    final = keel.watch(st.run_id, timeout_s=120)
    assert final.status == RunStatus.SUCCEEDED, final.error
    assert final.data["proposal"]["tool"] == "restore_config"
    assert scripted.calls()["large-model"] >= 2  # the interrupted call was made again


@pytest.mark.parametrize(
    ("proposal", "field"),
    [
        ({"tool": "drop_database", "args": {}}, "tool"),
        ({"tool": "restore_config", "args": {}}, "args"),
        ({"tool": "restore_config", "args": {"service": 7}}, "args.service"),
        ({"tool": "restore_config", "args": {"service": ""}}, "args.service"),
        ({"tool": "restore_config", "args": {"service": "a", "force": True}}, "args"),
        ({"tool": "read_logs", "args": {"service": "a"}, "sudo": True}, "sudo"),
        ({"tool": "read_logs", "args": "service=a"}, "args"),
    ],
)
def test_validator_names_the_field(proposal: dict[str, object], field: str) -> None:
    ok, errors = check(proposal, [ToolSpec.model_validate(t) for t in TOOLS])  # type: ignore[arg-type]
    assert ok is None
    assert field in [e.field for e in errors]


ITEMS = [
    MemoryItem(id="a", kind="document", title="Disk full", text="free space on the volume"),
    MemoryItem(id="b", kind="document", title="Bad config", text="restore the last good config"),
    MemoryItem(id="c", kind="document", title="TLS", text="renew the certificate"),
]


def test_bm25_ranks_the_matching_runbook_first() -> None:

    got = rank(ITEMS, "service broken by a bad config change", 3)
    assert [i.id for i in got] == ["b"]
    assert [i.id for i in rank(ITEMS, "disk volume config", 2)] == ["a", "b"]


def test_calls_spread_over_a_pool(ray_session: None) -> None:

    pool = WorkerPool("validator-spread", ValidatorWorker, size=3)
    tools = [ToolSpec.model_validate(t) for t in TOOLS]
    msg = ValidateRequest(proposal={"tool": "read_logs", "args": {"service": "a"}}, tools=tools)
    served = {pool.call_sync("validate", msg).worker for _ in range(6)}
    assert served == {f"keel-validator-spread-{i}" for i in range(3)}
    for handle in pool.handles:
        ray.kill(handle, no_restart=True)
