"""The ``keel`` command. Exit codes: 0 success, 1 a run that did not succeed, 2 bad input."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from rich.markup import escape

from keel.cli.common import _Parser, err
from keel.cli.memory import add_memory_commands
from keel.cli.ops import SCENARIOS, cmd_batch, cmd_demo, cmd_down, cmd_eval, cmd_serve, cmd_up
from keel.cli.runs import (
    cmd_approve,
    cmd_cancel,
    cmd_replay,
    cmd_resume,
    cmd_run,
    cmd_runs,
    cmd_show,
    cmd_trace,
)
from keel.errors import ErrorKind, KeelError, exit_code


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="keel", description="Keel: a durable runtime for agents that act.")
    p.add_argument("--config", help="path to keel.yaml (default: ./keel.yaml or $KEEL_CONFIG)")
    p.add_argument("--storage", help="storage URL (overrides config and $KEEL_STORAGE)")
    p.add_argument(
        "--debug",
        action="store_true",
        help="on an error, print the full traceback too (or set KEEL_DEBUG=1)",
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser("demo", help="run the bundled incident demo end to end")
    demo.add_argument("--fault", choices=list(SCENARIOS), help="one scenario (default: both)")
    demo.add_argument(
        "--auto-approve", action="store_true", help="approve restarts without asking a person"
    )
    demo.set_defaults(fn=cmd_demo)

    run = sub.add_parser("run", help="start a run and follow it")
    run.add_argument("workflow", help="a workflow name or module:attr")
    run.add_argument("--goal", default="", help="what the run should achieve")
    run.add_argument("--input", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--run-id", help="choose the run id (default: generated)")
    run.add_argument("--detach", action="store_true", help="return once the run is created")
    run.add_argument(
        "--as", dest="principal", default=None, help="act as this principal (policy: act_as)"
    )
    run.add_argument(
        "--budget",
        action="append",
        default=[],
        metavar="LIMIT=VALUE",
        help="this run's own limit, e.g. tool_calls=5 (tightens keel.yaml's budgets)",
    )
    run.set_defaults(fn=cmd_run)

    runs = sub.add_parser("runs", help="list runs")
    runs.add_argument("--status", help="only runs in this status")
    runs.add_argument("--workflow", help="only runs of this workflow")
    runs.add_argument("--json", action="store_true")
    runs.set_defaults(fn=cmd_runs)

    show = sub.add_parser("show", help="a run's status, current node and timeline")
    show.add_argument("run_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(fn=cmd_show)

    resume = sub.add_parser("resume", help="continue an unfinished or paused run")
    resume.add_argument("run_id")
    resume.add_argument("--reason", default="")
    resume.add_argument(
        "--effect",
        choices=["applied", "not_applied"],
        help="settle an effect whose outcome was unknown",
    )
    resume.add_argument("--detach", action="store_true")
    resume.set_defaults(fn=cmd_resume)

    for verb, text in (("approve", "approve"), ("reject", "reject")):
        ap = sub.add_parser(verb, help=f"{text} the action a run is waiting on")
        ap.add_argument("run_id")
        ap.add_argument(
            "--as", dest="principal", default=None, help="act as this principal (policy: act_as)"
        )
        ap.add_argument("--reason", default="", help="why (required to reject)")
        ap.add_argument("--detach", action="store_true")
        ap.set_defaults(fn=cmd_approve)

    rp = sub.add_parser("replay", help="re-walk a run from its ledger, calling nothing")
    rp.add_argument("run_id")
    rp.add_argument("--ledger", help="a JSON file of events to replay instead of the stored ledger")
    rp.add_argument("--json", action="store_true")
    rp.set_defaults(fn=cmd_replay)

    tr = sub.add_parser("trace", help="a run as a tree of nodes with timings")
    tr.add_argument("run_id")
    tr.set_defaults(fn=cmd_trace)

    srv = sub.add_parser("serve", help="deploy the router and the runs API on Ray Serve")
    srv.add_argument("--serve-config", default="serve_config.yaml")
    srv.set_defaults(fn=cmd_serve)

    bt = sub.add_parser("batch", help="run every task of a JSON-lines file (idempotent)")
    bt.add_argument("file", help='one task per line: {"id": ..., "workflow": ..., "inputs": {}}')
    bt.add_argument("--workflow", help="for lines that name none")
    bt.add_argument("--concurrency", type=int, default=16, help="runs in flight at once")
    bt.add_argument("--results", help="results file (default: FILE.results.jsonl)")
    bt.add_argument("--prefix", default="batch-", help="run id = PREFIX + task id")
    bt.add_argument("--timeout", type=float, default=None, help="seconds to follow each run")
    bt.add_argument("--no-progress", action="store_true")
    bt.set_defaults(fn=cmd_batch)

    ev = sub.add_parser("eval", help="evaluate models, components and whole runs")
    ev.add_argument("suite", nargs="?", help="a suite YAML file or a bundled suite name")
    ev.add_argument("--baseline", help="an earlier report (dir or report.json) to compare with")
    ev.add_argument("--threshold", type=float, default=0.05, help="how much worse is a regression")
    ev.add_argument("--out", default="eval-report", help="where the report goes")
    ev.add_argument("--only", action="append", default=[], metavar="SCENARIO")
    ev.add_argument("--layers", default="model,component,trajectory")
    ev.add_argument("--no-progress", action="store_true")
    ev.add_argument("--from-runs", metavar="QUERY", help="recorded runs: all, or k=v,...")
    ev.add_argument("--swap", metavar="KIND=VALUE", help="tier=NAME, threshold=T:S, policy=CSV")
    ev.set_defaults(fn=cmd_eval)

    up = sub.add_parser("up", help="host the embedded instance for this store until `keel down`")
    up.add_argument("--detach", action="store_true", help="in the background")
    up.set_defaults(fn=cmd_up)
    down = sub.add_parser("down", help="stop the embedded instance that `keel up` started")
    down.set_defaults(fn=cmd_down)

    cancel = sub.add_parser("cancel", help="cancel an unfinished run")
    cancel.add_argument("run_id")
    cancel.add_argument("--reason", default="")
    cancel.set_defaults(fn=cmd_cancel)

    add_memory_commands(sub)
    return p


def _user_code_importable() -> None:
    """``keel run flows:wf`` finds ``flows.py`` in the current directory, as ``python -m``
    would, in this process and in the Ray workers it starts (which inherit PYTHONPATH)."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if cwd not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([cwd, *[p for p in paths if p]])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _user_code_importable()
    debug = args.debug or os.environ.get("KEEL_DEBUG", "") not in ("", "0")
    try:
        code: int = args.fn(args)
    except KeelError as exc:
        # Who must act decides the exit code (keel.errors.OUTCOMES), never the message.
        if debug:
            err.print("".join(traceback.format_exception(exc)), markup=False, highlight=False)
        label = "error" if exc.kind in (ErrorKind.USAGE, ErrorKind.NOT_FOUND) else exc.kind
        err.print(f"keel: {label}: {escape(str(exc))}")
        return exit_code(exc)
    except KeyboardInterrupt:
        err.print("interrupted: the run continues from its last checkpoint on `keel resume`")
        return 130
    return code
