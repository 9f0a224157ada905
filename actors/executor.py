"""The executor: the only worker that runs tools (apply, and verify on resume)."""

from __future__ import annotations

import asyncio

import ray
from pydantic_core import to_jsonable_python

from actors.worker_messages import ExecuteRequest, ExecuteResponse

ROLE = "executor"


@ray.remote
class ExecutorWorker:
    def __init__(self, name: str) -> None:
        self.name = name

    async def execute(self, msg: ExecuteRequest) -> ExecuteResponse:
        args = dict(msg.args)
        if msg.verify_only:
            verdict = await asyncio.to_thread(msg.tool.verify, args, msg.key)
            return ExecuteResponse(verification=verdict.model_dump(mode="json"), worker=self.name)
        result = await asyncio.to_thread(msg.tool.apply, args, msg.key)
        return ExecuteResponse(result=to_jsonable_python(result), worker=self.name)
