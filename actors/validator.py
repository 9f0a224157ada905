"""The validator: a proposal becomes an action only if it is well formed for its tool."""

from __future__ import annotations

from typing import Any

import jsonschema
import ray

from keel.actors.worker_messages import (
    FieldError,
    Proposal,
    ToolSpec,
    ValidateRequest,
    ValidateResponse,
)

ROLE = "validator"


def validate_args(schema: dict[str, Any] | None, args: Any) -> list[FieldError]:
    """Every way ``args`` breaks ``schema``, each naming its field (``args.x.y``)."""
    if not isinstance(args, dict):
        return [FieldError(field="args", reason="must be an object")]
    if schema is None:
        return []
    validator = jsonschema.Draft202012Validator(schema)
    errors = []
    for err in sorted(validator.iter_errors(args), key=lambda e: [str(p) for p in e.path]):
        path = ".".join(str(p) for p in err.path)
        reason = err.message if len(err.message) <= 300 else err.message[:297] + "..."
        errors.append(FieldError(field=f"args.{path}" if path else "args", reason=reason))
    return errors


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
