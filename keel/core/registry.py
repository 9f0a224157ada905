"""Finding workflows by name: the bundled ones, configured ones, or any ``module:attr``."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from functools import lru_cache

from keel.core.workflow import Workflow
from keel.errors import ErrorCode, InputError

BUILTIN: dict[str, str] = {
    "demo": "keel.examples.demo:workflow",
    "incident": "keel.examples.incident:workflow",
}


def resolve_ref(name: str, extra: Mapping[str, str] | None = None) -> str:
    """Map a workflow name to its ``module:attr`` reference, checking that it loads."""
    table = {**BUILTIN, **(extra or {})}
    ref = table.get(name)
    if ref is None:
        if ":" not in name:
            known = ", ".join(sorted(table))
            raise InputError(
                f"unknown workflow {name!r} (known: {known}; or give module:attr)",
                field="workflow",
                code=ErrorCode.WORKFLOW_NOT_FOUND,
            )
        ref = name
    load_workflow(ref)
    return ref


@lru_cache(maxsize=256)
def load_workflow(ref: str) -> Workflow:
    """Import ``module:attr`` and check that it is a sound ``Workflow``."""
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
        obj = getattr(module, attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise InputError(
            f"cannot load workflow {ref!r}: {exc}",
            field="workflow",
            code=ErrorCode.WORKFLOW_NOT_FOUND,
        ) from None
    if not isinstance(obj, Workflow):
        raise InputError(
            f"{ref!r} is a {type(obj).__name__}, not a Workflow",
            field="workflow",
            code=ErrorCode.WORKFLOW_NOT_FOUND,
        )
    return obj.validate()
