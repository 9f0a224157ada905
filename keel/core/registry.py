"""Finding workflows by name: the bundled ones, configured ones, or any ``module:attr``."""

from __future__ import annotations

import importlib
import os
import traceback
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


_KEEL_DIR = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


def where(exc: BaseException) -> str:
    """Where in the user's own code ``exc`` arose: the innermost frame outside Keel, the
    standard library and installed packages (for a syntax error, its own position)."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}"
    found = ""
    for frame in traceback.extract_tb(exc.__traceback__):
        path = os.path.realpath(frame.filename)
        if frame.filename.startswith("<") or path.startswith(_KEEL_DIR):
            continue
        if "site-packages" in path or "/lib/python3" in path:
            continue
        found = f"{frame.filename}:{frame.lineno}"
    return found


@lru_cache(maxsize=256)
def load_workflow(ref: str) -> Workflow:
    """Import ``module:attr`` and check that it is a sound ``Workflow``.

    Anything the user's module raises while it loads (an import error, a tool refused at
    definition, a typo) becomes one ``InputError`` line: the reference, the exception's
    type and message, and where in the user's file; the original stays chained as the
    cause, for ``--debug``.
    """
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise InputError(
            f"workflow {ref!r}: give module:attr (for example mypkg.flows:wf)",
            field="workflow",
            code=ErrorCode.WORKFLOW_NOT_FOUND,
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        at = where(exc)
        raise InputError(
            f"cannot load workflow {ref!r}: {type(exc).__name__}: {exc}"
            + (f" (at {at})" if at else ""),
            field="workflow",
            code=ErrorCode.WORKFLOW_NOT_FOUND,
        ) from exc
    obj = getattr(module, attr, None)
    if obj is None:
        raise InputError(
            f"cannot load workflow {ref!r}: module {module_name!r} has no attribute {attr!r}",
            field="workflow",
            code=ErrorCode.WORKFLOW_NOT_FOUND,
        )
    if not isinstance(obj, Workflow):
        raise InputError(
            f"{ref!r} is a {type(obj).__name__}, not a Workflow",
            field="workflow",
            code=ErrorCode.WORKFLOW_NOT_FOUND,
        )
    return obj.validate()
