"""The model only proposes: a proposal cannot choose its target, writes wait for a person
unless policy exempts them, names are compared normalised, and a broken policy file never
loosens the rules. Each attack is tried for real on the in-process engine, and the target
is checked afterwards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field, JsonValue, ValidationInfo, field_validator

from keel.core.events import PolicyDecided, ProposalRejected, RunStatus
from keel.core.nodes import ConfinedPath, NodeContext
from keel.core.tool import Tool, Verification, confined
from keel.core.workflow import END, Workflow
from keel.errors import InputError
from keel.examples.demo import workflow as demo
from keel.policy.engine import DEFAULT_MODEL, DEFAULT_POLICY, PolicyEngine
from keel.runtime.decisions import load_events
from keel.runtime.engine import RunEngine
from keel.runtime.inline import InlineNodeRunner
from keel.storage.local import LocalStore
from keel.storage.runs import RunStore


class WriteArgs(BaseModel):
    root: str
    service: str = "checkout"
    text: str = Field(default="", max_length=10_000)

    @field_validator("root")
    @classmethod
    def _inside(cls, value: str, info: ValidationInfo) -> str:
        return confined(value, info)


class RewriteConfig(Tool):
    """Rewrites service.json under ``root``: the kind of write an attacker wants aimed."""

    action = "write"
    args_model = WriteArgs
    resource_args = ("service",)

    def __init__(self, name: str = "rewrite_config") -> None:
        self.name = name

    def apply(self, args: dict[str, Any], key: str) -> JsonValue:
        Path(args["root"], "service.json").write_text(args["text"])
        return {"written": True}

    def verify(self, args: dict[str, Any], key: str) -> Verification:
        return Verification(status="not_applied")


class Target(BaseModel):
    root: ConfinedPath
    proposal: dict[str, JsonValue] = {}


class S(BaseModel):
    result: JsonValue = None
    errors: list[dict[str, str]] = []


def aimed(tool: Any) -> Workflow:
    """One effect whose target is bound to the run's input; the 'model' proposes whatever
    the test puts in the input ``proposal``."""
    wf = Workflow(f"aimed_{tool.name}", state=S, inputs=Target)

    @wf.effect(tool, "act", role="mitigate", result_field="result", bind={"root": "root"})
    def act(state: S, ctx: NodeContext) -> dict[str, Any]:
        return dict(ctx.inputs["proposal"])  # type: ignore[arg-type]

    wf.edge("act", END)
    return wf.validate()


def service(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "service.json").write_text('{"max_connections": 100}')
    return path


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    tenants = tmp_path / "tenants"
    return {
        "roots": tenants,
        "mine": service(tenants / "mine"),
        "other": service(tenants / "other-tenant"),
        "store": tmp_path / "store",
    }


def engine(world: dict[str, Path], wf: Workflow, policy: PolicyEngine | None = None) -> RunEngine:
    return RunEngine(
        RunStore(LocalStore(world["store"], fsync=False)),
        InlineNodeRunner(),
        lambda _ref: wf,
        policy=policy or PolicyEngine(),
        tool_roots=[str(world["roots"])],
    )


@pytest.mark.parametrize(
    "evil_root",
    [
        "{other}",
        "{mine}/./././../other-tenant",
        "{mine}/../../tenants/other-tenant/.",
    ],
)
async def test_a_proposal_cannot_choose_its_target(world: dict[str, Path], evil_root: str) -> None:
    wf = aimed(RewriteConfig())
    eng = engine(world, wf)
    root = evil_root.format(mine=world["mine"], other=world["other"])
    created = await eng.create(
        "x", "", {"root": str(world["mine"]), "proposal": {"root": root, "text": "pwned"}}
    )
    final = await eng.wait(created.run_id, 30)
    assert final.status == RunStatus.FAILED
    events = load_events(eng.store.load(created.run_id).events)
    rejected = next(e for e in events if isinstance(e, ProposalRejected))
    assert rejected.errors[0]["field"] == "args.root"
    assert "cannot choose" in rejected.errors[0]["reason"]
    for name in ("mine", "other"):
        assert (world[name] / "service.json").read_text() == '{"max_connections": 100}'
    await eng.close()


async def test_a_run_cannot_start_on_a_target_outside_the_tool_roots(
    world: dict[str, Path], tmp_path: Path
) -> None:
    elsewhere = service(tmp_path / "elsewhere")
    eng = engine(world, aimed(RewriteConfig()))
    for root in (str(elsewhere), f"{world['mine']}/../../elsewhere", "/etc"):
        with pytest.raises(InputError) as info:
            await eng.create("x", "", {"root": root, "proposal": {"text": "pwned"}})
        assert info.value.field == "inputs.root" and "outside" in info.value.message
    assert not (world["store"] / "runs").exists() or not list((world["store"] / "runs").iterdir())
    assert (elsewhere / "service.json").read_text() == '{"max_connections": 100}'
    await eng.close()


async def test_the_demo_outbox_cannot_be_pointed_anywhere(
    world: dict[str, Path], tmp_path: Path
) -> None:
    eng = engine(world, demo)
    with pytest.raises(InputError) as info:
        await eng.create(
            "keel.examples.demo:workflow", "down", {"outbox": str(tmp_path / "anywhere")}
        )
    assert info.value.field == "inputs.outbox"
    assert not (tmp_path / "anywhere").exists()
    await eng.close()


async def test_every_write_waits_for_a_person_unless_policy_exempts_it(
    world: dict[str, Path],
) -> None:
    wf = aimed(RewriteConfig("send_payment"))  # a write no rule mentions
    eng = engine(world, wf)
    created = await eng.create(
        "x", "", {"root": str(world["mine"]), "proposal": {"text": "x" * 300}}
    )
    paused = await eng.wait(created.run_id, 30)
    assert paused.status == RunStatus.AWAITING_APPROVAL
    assert (world["mine"] / "service.json").read_text() == '{"max_connections": 100}'
    # The person sees the whole action, as it will run, and what it acts on.
    request = paused.approval
    assert request is not None and request.approved is None
    assert request.resource == "checkout"
    assert request.object == "tool:send_payment:checkout"
    assert request.args == {"root": str(world["mine"]), "service": "checkout", "text": "x" * 300}
    assert json.dumps(request.args, sort_keys=True) in paused.reason
    await eng.close()


async def test_tool_names_are_normalised_before_policy_matches_them(
    world: dict[str, Path],
) -> None:
    wf = aimed(RewriteConfig("Delete_Data"))  # slipped past tool:delete_* before
    eng = engine(world, wf)
    created = await eng.create("x", "", {"root": str(world["mine"]), "proposal": {}})
    final = await eng.wait(created.run_id, 30)
    assert final.status == RunStatus.FAILED
    decision = next(
        e
        for e in load_events(eng.store.load(created.run_id).events)
        if isinstance(e, PolicyDecided)
    )
    assert decision.effect == "deny" and decision.object == "tool:delete_data:checkout"
    assert (world["mine"] / "service.json").read_text() == '{"max_connections": 100}'
    await eng.close()


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: text.index("p2,")],  # cut before the approval line
        lambda text: text.rstrip("\n")[:-7],  # cut mid-line: no final newline
        lambda text: text + "p, mitigate, tool:*, write\n",  # a line the model rejects
        lambda text: "",  # emptied
    ],
    ids=["truncated", "torn", "malformed", "emptied"],
)
def test_a_damaged_policy_file_never_loosens_the_rules(tmp_path: Path, damage: Any) -> None:
    model, policy = tmp_path / "model.conf", tmp_path / "policy.csv"
    shutil.copy(DEFAULT_MODEL, model)
    shutil.copy(DEFAULT_POLICY, policy)
    engine = PolicyEngine(model, policy)
    before = engine.decide("mitigate", "tool:restart_service:checkout", "write")
    assert before.effect == "approve"
    policy.write_text(damage(policy.read_text()))
    after = engine.decide("mitigate", "tool:restart_service:checkout", "write")
    assert after.effect == "approve"
    assert engine.decide("mitigate", "tool:drop_database", "write").effect == "deny"
