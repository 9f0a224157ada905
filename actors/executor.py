"""The executor: the only worker that runs tools (apply, and verify on resume).

It trusts nobody: it is told where a tool is declared (workflow and node), never handed a
tool object, and finds the tool in its own registry; it checks the arguments against the
tool's schema and model; it asks policy itself, as the node's declared role; and where
policy wants a person's approval it looks for that approval in the run's own ledger. So an
unvalidated, unauthorised or unapproved call is refused here even if it got past the
orchestrator.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray
from pydantic_core import to_jsonable_python

from keel.actors.worker_messages import ExecuteRequest, ExecuteResponse
from keel.core.events import ApprovalDecided
from keel.core.nodes import Node
from keel.core.registry import load_workflow
from keel.core.tool import Tool, tool_action, tool_object, tool_schema
from keel.core.validation import validate_args
from keel.errors import InputError, KeelError, PolicyError
from keel.policy.engine import PolicyEngine
from keel.runtime.decisions import args_digest, load_events, normalise_args
from keel.runtime.tracing import in_run_trace
from keel.storage import open_store
from keel.storage.runs import RunStore

ROLE = "executor"


@ray.remote
class ExecutorWorker:
    def __init__(
        self,
        name: str,
        policy_model: str | None = None,
        policy_file: str | None = None,
        tool_roots: list[str] | None = None,
        storage_url: str | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.policy = PolicyEngine(policy_model, policy_file)
        self.tool_roots = list(tool_roots or [])
        self.runs = (
            RunStore(open_store(storage_url, storage_options or {}, fsync=False))
            if storage_url
            else None
        )
        self.inflight: set[str] = set()

    @staticmethod
    def _tool(msg: ExecuteRequest) -> tuple[Node, Tool]:
        """The tool as the workflow declares it, from this process's own registry."""
        node = load_workflow(msg.workflow_ref).nodes.get(msg.node)
        tool = node.tool_named(msg.tool) if node is not None and node.is_effect else None
        if node is None or tool is None:
            raise InputError(
                f"no tool {msg.tool!r} at node {msg.node!r} of {msg.workflow_ref}", field="tool"
            )
        return node, tool

    def _admit(self, msg: ExecuteRequest, node: Node, tool: Tool) -> None:
        errors = [e.model_dump() for e in validate_args(tool_schema(tool), msg.args)]
        if not errors:
            _, errors = normalise_args(tool, dict(msg.args), self.tool_roots)
        if errors:
            first = errors[0]
            raise InputError(
                f"refused unvalidated arguments: {first['reason']}",
                field=first["field"],
                errors=errors,
            )
        obj = tool_object(tool, dict(msg.args))
        decision = self.policy.decide(node.role, obj, tool_action(tool))
        if decision.effect == "approve" and self._approved(msg):
            return
        if decision.effect != "allow":
            raise PolicyError(
                f"{node.role or 'no role'} may not {decision.action} {decision.object} "
                f"({decision.effect}, rule [{', '.join(decision.rule)}])",
                field="role",
            )

    def _approved(self, msg: ExecuteRequest) -> bool:
        """Whether the run's own ledger holds a person's approval of exactly these
        arguments at this step (the caller's word is not enough)."""
        if self.runs is None:
            return False
        try:
            events = load_events(self.runs.load(msg.run_id).events)
        except KeelError:
            return False
        digest = args_digest(dict(msg.args))
        return any(
            isinstance(ev, ApprovalDecided)
            and ev.approved
            and ev.step == msg.step
            and ev.node == msg.node
            and ev.args_digest == digest
            for ev in events
        )

    async def execute(self, msg: ExecuteRequest) -> ExecuteResponse:
        args = dict(msg.args)
        node, tool = self._tool(msg)
        if msg.verify_only:
            verdict = await asyncio.to_thread(tool.verify, args, msg.key)
            return ExecuteResponse(verification=verdict.model_dump(mode="json"), worker=self.name)
        await asyncio.to_thread(self._admit, msg, node, tool)
        # The apply runs on a thread that nothing can stop: its key stays in ``inflight``
        # until the thread ends, even if the caller gave up, so reconciliation can tell a
        # call that is still under way from one that is over.
        call = asyncio.get_running_loop().run_in_executor(
            None, in_run_trace, msg.run_id, tool.apply, args, msg.key
        )
        self.inflight.add(msg.key)
        call.add_done_callback(lambda _f: self.inflight.discard(msg.key))
        result = await asyncio.shield(call)
        return ExecuteResponse(result=to_jsonable_python(result), worker=self.name)

    async def running(self, key: str) -> bool:
        """Whether an apply under ``key`` is still under way on this replica."""
        return key in self.inflight
