"""Starting a run on behalf of a principal: which workflows are offered, whether policy lets
this principal start one, and the inputs checked against the workflow before anything is
sent to the orchestrator. The runs API and the A2A facade ask it the same way."""

from __future__ import annotations

from pydantic import JsonValue

from keel.actors.messages import StartRun
from keel.config import KeelConfig
from keel.core.registry import BUILTIN, load_workflow, resolve_ref
from keel.errors import PolicyError
from keel.policy.engine import PolicyEngine
from keel.runtime.decisions import new_run_id

# A bundled workflow's runs are named after the workflow itself (``run:incident``).
BUILTIN_NAMES = {name: name for name in BUILTIN}


class Starter:
    """Only workflows offered to the API (``api.workflows``; by default the bundled ones
    and those named in ``workflows``) can be started, and permission is checked before any
    workflow code is imported."""

    def __init__(self, config: KeelConfig, policy: PolicyEngine) -> None:
        self.config, self.policy = config, policy
        self.offered = set(config.api.workflows) or {*BUILTIN, *config.workflows}

    def may(self, principal: str, workflow: str, action: str) -> None:
        decision = self.policy.decide(principal, f"run:{workflow}", action)
        if decision.effect != "allow":
            raise PolicyError(f"{principal} may not {action} runs of {workflow}", field="principal")

    def message(
        self,
        principal: str,
        workflow: str,
        goal: str,
        inputs: dict[str, JsonValue],
        budgets: dict[str, JsonValue] | None = None,
        run_id: str | None = None,
    ) -> StartRun:
        """The request to start, or the error naming what is wrong with it.

        Raises:
            PolicyError: the workflow is not offered, or policy refuses this principal.
            InputError: the inputs do not fit the workflow (naming the input).
        """
        if workflow not in self.offered:
            raise PolicyError(
                f"workflow {workflow!r} is not offered over the API (api.workflows)",
                field="workflow",
            )
        self.may(principal, BUILTIN_NAMES.get(workflow, workflow), "start")
        ref = resolve_ref(workflow, self.config.workflows)
        clean = load_workflow(ref).check_inputs(inputs, self.config.tool_roots())
        # The id is chosen here, not by the orchestrator: it says which orchestrator of a
        # sharded deployment the run lives with.
        run_id = run_id or new_run_id()
        asked = {"goal": goal, "principal": principal, "budgets": budgets, "run_id": run_id}
        return StartRun.model_validate({"workflow": ref, "inputs": clean, **asked})
