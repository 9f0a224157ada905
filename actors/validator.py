"""The validator: a proposal becomes an action only if it is well formed for its tool."""

from __future__ import annotations

from typing import Any

import ray

from keel.actors.worker_messages import (
    Proposal,
    ToolSpec,
    ValidateRequest,
    ValidateResponse,
)
from keel.core.validation import FieldError, validate_args

ROLE = "validator"


def check(raw: dict[str, Any], tools: list[ToolSpec]) -> tuple[Proposal | None, list[FieldError]]:
    """Every problem with a proposal, each naming its field. Pure: used by tests too."""
    errors = [
        FieldError(field=key, reason="unexpected field")
        for key in raw
        if key not in ("tool", "args", "rationale")
    ]
    names = {t.name: t for t in tools}
    tool = raw.get("tool")
    if not isinstance(tool, str) or tool not in names:
        errors.append(
            FieldError(field="tool", reason=f"unknown tool {tool!r}; one of {sorted(names)}")
        )
        return None, errors
    errors.extend(validate_args(names[tool].parameters, raw.get("args", {})))
    if errors:
        return None, errors
    return Proposal.model_validate(raw), []


@ray.remote
class ValidatorWorker:
    def __init__(self, name: str) -> None:
        self.name = name

    async def validate(self, msg: ValidateRequest) -> ValidateResponse:
        proposal, errors = check(dict(msg.proposal), list(msg.tools))
        return ValidateResponse(
            ok=proposal is not None, proposal=proposal, errors=errors, worker=self.name
        )
