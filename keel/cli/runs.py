"""The commands on runs: start, list, show, resume, approve or reject, cancel, replay,
trace."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from keel.actors.replay import replay
from keel.cli.common import (
    EXIT_OK,
    EXIT_RUN_FAILED,
    _apply_storage,
    _cli_storage_args,
    _client,
    _finish,
    _status_style,
    err,
    out,
    parse_inputs,
)
from keel.cli.render import _follow, print_events
from keel.client import Keel
from keel.config import load_config
from keel.core.events import RunStatus
from keel.core.registry import load_workflow
from keel.core.timeline import trace_tree
from keel.errors import InputError
from keel.identity import acting_principal
from keel.instance import start_background
from keel.policy.engine import PolicyEngine
from keel.runtime.decisions import load_events
from keel.runtime.engine import RunView


def cmd_run(args: argparse.Namespace) -> int:
    inputs = parse_inputs(args.input)
    budgets = {
        k if k.startswith("max_") else f"max_{k}": v
        for k, v in parse_inputs(args.budget, "--budget").items()
    }
    with _client(args) as keel:
        msg = keel.check_start(
            args.workflow,
            args.goal,
            inputs,
            run_id=args.run_id,
            principal=acting_principal(keel.config, args.principal),
            budgets=budgets,
        )
        if args.detach and keel.config.ray.address is None:
            # The run must outlive this command: make sure an instance hosts it (only now,
            # once the request is known to be good: a refused one starts nothing).
            start_background(keel, _cli_storage_args(args))
        state = keel.submit(msg, chosen_id=args.run_id is not None)
        if keel.attached is not None:
            err.print(
                f"keel: attached to the Keel instance already driving this store "
                f"(Ray at {keel.attached.address}, pid {keel.attached.host_pid})"
            )
        out.print(f"started run [bold]{state.run_id}[/bold] ({escape(state.workflow)})")
        if args.detach:
            return EXIT_OK
        return _finish(_follow(keel, state))


def cmd_runs(args: argparse.Namespace) -> int:

    keel = Keel(load_config(args.config))
    _apply_storage(keel, args)
    rows = keel.runs(status=args.status, workflow=args.workflow)
    if args.json:
        print(json.dumps([r.model_dump() for r in rows], indent=2))
        return EXIT_OK
    table = Table("run", "workflow", "status", "created", "goal / reason")
    for r in rows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created_at))
        style = _status_style(r.status)
        table.add_row(
            escape(r.run_id),
            escape(r.workflow),
            f"[{style}]{escape(r.status)}[/{style}]",
            created,
            escape(r.reason or r.goal),
        )
    out.print(table if rows else "no runs")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:

    keel = Keel(load_config(args.config))
    _apply_storage(keel, args)
    view: RunView = keel.show(args.run_id)
    for warning in view.warnings:
        err.print(f"warning: {escape(warning)}")
    if args.json:
        print(view.model_dump_json(indent=2))
        return EXIT_OK
    st = view.state
    style = _status_style(st.status)
    out.print(
        f"run [bold]{escape(st.run_id)}[/bold]  workflow {escape(st.workflow)}  "
        f"[{style}]{st.status}[/{style}]"
    )
    out.print(f"  goal: {escape(st.goal)}  (started by {escape(st.principal)})")
    out.print(f"  current node: {escape(st.next_node or '-')}   steps: {st.step}")
    if st.reason:
        out.print(f"  reason: {escape(st.reason)}")
    if st.status == RunStatus.AWAITING_APPROVAL and st.approval:
        # Everything the action will be given, as it will be given it.
        out.print(f"  pending approval: {escape(st.approval.model_dump_json(exclude_none=True))}")
    out.print("timeline:")
    print_events(view.events)
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    with _client(args) as keel:
        keel.show(args.run_id)  # unknown ids fail here, before Ray starts
        by = acting_principal(keel.config, None)
        state = keel.resume(args.run_id, by=by, reason=args.reason, effect=args.effect)
        out.print(f"resumed run [bold]{state.run_id}[/bold] at {state.next_node}")
        if args.detach:
            return EXIT_OK
        return _finish(_follow(keel, state))


def cmd_approve(args: argparse.Namespace) -> int:
    approved = args.command == "approve"
    if not approved and not args.reason.strip():
        raise InputError("a rejection needs a reason", field="--reason")
    with _client(args) as keel:
        keel.show(args.run_id)
        who = acting_principal(keel.config, args.principal)
        state = keel.approve(args.run_id, principal=who, approved=approved, reason=args.reason)
        out.print(f"{'approved' if approved else 'rejected'} by {escape(who)}")
        if not approved or args.detach:
            return _finish(state) if not approved else EXIT_OK
        return _finish(_follow(keel, state))


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as keel:
        keel.show(args.run_id)
        by = acting_principal(keel.config, None)
        return _finish(keel.cancel(args.run_id, by=by, reason=args.reason))


def cmd_replay(args: argparse.Namespace) -> int:

    keel = Keel(load_config(args.config))
    _apply_storage(keel, args)
    if args.ledger:
        try:
            raw = json.loads(Path(args.ledger).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(
                f"cannot read a ledger from {args.ledger}: {exc}", field="--ledger"
            ) from None
        events = load_events(raw["events"] if isinstance(raw, dict) else raw)
    else:
        events = keel.show(args.run_id).events
    first = events[0]
    wf = load_workflow(getattr(first, "workflow_ref", ""))
    policy = PolicyEngine(keel.config.policy.model, keel.config.policy.policy)
    report = replay(events, wf, policy)
    if args.json:
        print(report.model_dump_json(indent=2))
    elif report.divergence is None:
        out.print(f"run {report.run_id}: identical ({report.steps} steps replayed)")
    else:
        d = report.divergence
        out.print(f"run {report.run_id}: diverged at #{d.seq} node {d.node}: {d.what}")
        out.print(f"  recorded: {escape(json.dumps(d.recorded)[:300])}")
        out.print(f"  replayed: {escape(json.dumps(d.replayed)[:300])}")
    return EXIT_OK if report.identical else EXIT_RUN_FAILED


def cmd_trace(args: argparse.Namespace) -> int:

    keel = Keel(load_config(args.config))
    _apply_storage(keel, args)
    view = keel.show(args.run_id)
    st = view.state
    tree = Tree(
        f"[bold]run {st.run_id}[/bold] {st.workflow} [{_status_style(st.status)}]{st.status}"
    )
    for node in trace_tree(view.events):
        if node.duration_ms is None:
            tree.add(escape(node.label))
            continue
        branch = tree.add(f"[bold]{escape(node.label)}[/bold] {node.duration_ms:.1f} ms")
        for line in node.inner:
            branch.add(escape(line))
    out.print(tree)
    return EXIT_OK
