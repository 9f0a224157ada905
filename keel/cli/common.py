"""What every command shares: the consoles, exit codes, the client for a command's
configuration, and how a run's end is reported."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from pydantic import JsonValue
from rich.console import Console
from rich.markup import escape

from keel.client import Keel
from keel.config import load_config
from keel.core.events import RunStatus
from keel.core.state import RunState
from keel.errors import InputError

EXIT_OK, EXIT_RUN_FAILED, EXIT_BAD_INPUT = 0, 1, 2

out = Console(highlight=False, soft_wrap=True)

err = Console(stderr=True, highlight=False, soft_wrap=True)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        err.print(f"keel: error: {message}")
        raise SystemExit(EXIT_BAD_INPUT)


def parse_inputs(pairs: Sequence[str], flag: str = "--input") -> dict[str, JsonValue]:
    """``KEY=VALUE`` pairs; a VALUE that parses as JSON is taken as JSON, else as text."""
    inputs: dict[str, JsonValue] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not key.strip().isidentifier():
            raise InputError(f"{pair!r} is not KEY=VALUE with KEY an identifier", field=flag)
        try:
            inputs[key.strip()] = json.loads(value)
        except ValueError:
            inputs[key.strip()] = value
    return inputs


def _status_style(status: str) -> str:
    return {
        "succeeded": "green",
        "failed": "red",
        "cancelled": "yellow",
        "running": "cyan",
    }.get(status, "magenta")


def _finish(state: RunState) -> int:
    style = _status_style(state.status)
    out.print(f"run [bold]{state.run_id}[/bold]: [{style}]{state.status}[/{style}]")
    if state.status == RunStatus.SUCCEEDED:
        return EXIT_OK
    if state.reason:
        out.print(f"  reason: {escape(state.reason)}")
    if not state.status.terminal:
        out.print(f"  continue it with: keel resume {state.run_id}")
    return EXIT_RUN_FAILED


def _waiting(n: int) -> None:
    err.print(
        f"keel: waiting for {n} other keel process(es) using this instance to finish "
        "(^C stops now; their runs continue from their checkpoints later)",
        highlight=False,
    )


@contextmanager
def _client(args: argparse.Namespace) -> Iterator[Any]:
    """A client for the command's configuration, closed (and, for a host, kept up while
    other processes use its instance) on the way out."""

    keel = Keel(load_config(args.config))
    _apply_storage(keel, args)
    try:
        yield keel
    finally:
        keel.close(wait_for_attached=_waiting)


def _cli_storage_args(args: argparse.Namespace) -> list[str]:
    """The global flags a background ``keel up`` needs to see the same store."""
    flags = []
    if args.config:
        flags += ["--config", str(Path(args.config).resolve())]
    if getattr(args, "storage", None):
        flags += ["--storage", args.storage]
    return flags


def _apply_storage(keel: Any, args: argparse.Namespace) -> None:
    if getattr(args, "storage", None):
        keel.config.storage.url = args.storage
        keel._store = None
