"""Checking arguments against a JSON Schema, each problem naming its field: what the engine,
the validator worker and the executor all ask of a proposal before anything runs."""

from __future__ import annotations

from typing import Any

import jsonschema
from pydantic import BaseModel, ConfigDict


class FieldError(BaseModel):
    """One problem with an input: the field at fault (``args.x.y``) and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    field: str
    reason: str


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
