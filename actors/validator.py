"""The validator: a proposal becomes an action only if it is well formed for its tool."""

from __future__ import annotations

from typing import Any

import jsonschema
import ray

from actors.worker_messages import FieldError, Proposal, ToolSpec, ValidateRequest, ValidateResponse

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
    args = raw.get("args", {})
    if not isinstance(args, dict):
        errors.append(FieldError(field="args", reason="must be an object"))
        return None, errors
    validator = jsonschema.Draft202012Validator(names[tool].parameters)
    for err in sorted(validator.iter_errors(args), key=lambda e: list(e.path)):
        path = ".".join(str(p) for p in err.path)
        errors.append(FieldError(field=f"args.{path}" if path else "args", reason=err.message))
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
