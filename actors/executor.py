"""The executor: the only worker that runs tools (apply, and verify on resume).

It trusts nobody: before applying a tool it checks the arguments against the tool's schema
and asks policy itself whether the calling role may, and whether a person approved it, so
an unvalidated or unauthorised call is refused here even if it got past the orchestrator.
"""

from __future__ import annotations

import asyncio

import ray
from pydantic_core import to_jsonable_python

from actors.decisions import normalise_args
from actors.validator import validate_args
from actors.worker_messages import ExecuteRequest, ExecuteResponse
from keel.errors import InputError, PolicyError
from policy.engine import PolicyEngine
from sandbox.tool import tool_action, tool_object, tool_schema

ROLE = "executor"


@ray.remote
class ExecutorWorker:
    def __init__(
        self,
        name: str,
        policy_model: str | None = None,
        policy_file: str | None = None,
        tool_roots: list[str] | None = None,
    ) -> None:
        self.name = name
        self.policy = PolicyEngine(policy_model, policy_file)
        self.tool_roots = list(tool_roots or [])
        self.inflight: set[str] = set()

    def _admit(self, msg: ExecuteRequest) -> None:
        errors = [e.model_dump() for e in validate_args(tool_schema(msg.tool), msg.args)]
        if not errors:
            _, errors = normalise_args(msg.tool, dict(msg.args), self.tool_roots)
        if errors:
            first = errors[0]
            raise InputError(
                f"refused unvalidated arguments: {first['reason']}",
                field=first["field"],
                errors=errors,
            )
        obj = tool_object(msg.tool, dict(msg.args))
        decision = self.policy.decide(msg.role, obj, tool_action(msg.tool))
        if decision.effect == "deny" or (decision.effect == "approve" and not msg.approved_by):
            raise PolicyError(
                f"{msg.role or 'no role'} may not {decision.action} {decision.object} "
                f"({decision.effect}, rule [{', '.join(decision.rule)}])",
                field="role",
            )

    async def execute(self, msg: ExecuteRequest) -> ExecuteResponse:
        args = dict(msg.args)
        if not msg.verify_only:
            self._admit(msg)
        if msg.verify_only:
            verdict = await asyncio.to_thread(msg.tool.verify, args, msg.key)
            return ExecuteResponse(verification=verdict.model_dump(mode="json"), worker=self.name)
        # The apply runs on a thread that nothing can stop: its key stays in ``inflight``
        # until the thread ends, even if the caller gave up, so reconciliation can tell a
        # call that is still under way from one that is over.
        call = asyncio.get_running_loop().run_in_executor(None, msg.tool.apply, args, msg.key)
        self.inflight.add(msg.key)
        call.add_done_callback(lambda _f: self.inflight.discard(msg.key))
        result = await asyncio.shield(call)
        return ExecuteResponse(result=to_jsonable_python(result), worker=self.name)

    async def running(self, key: str) -> bool:
        """Whether an apply under ``key`` is still under way on this replica."""
        return key in self.inflight
