"""The ``keel`` command. Exit codes: 0 success, 1 a run that did not succeed, 2 bad input."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import yaml
from pydantic import JsonValue
from ray import serve
from ray.serve.schema import ServeDeploySchema
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from keel.actors.replay import replay
from keel.batch import Batch, progress_bar, read_tasks
from keel.client import Keel
from keel.config import load_config
from keel.core.registry import load_workflow
from keel.core.state import Event, RunState, RunStatus
from keel.errors import InputError, KeelError
from keel.evals import compare, counterfactual, report
from keel.evals.run import LAYERS, evaluate
from keel.evals.suite import load_suite
from keel.examples import demo_service
from keel.examples.incident import RUNBOOKS
from keel.identity import acting_principal
from keel.instance import instance_log, serve_forever, start_background, stop_instance
from keel.policy.engine import PolicyEngine
from keel.runtime.decisions import load_events
from keel.runtime.engine import RunView
from keel.storage.memory import MemoryStore

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


def describe(ev: Event) -> tuple[str, str]:
    """The node an event is about and a one-line description of it."""
    match ev.type:
        case "run_created":
            return "", f"run created: workflow {ev.workflow}, goal {ev.goal[:60]!r}"
        case "node_completed":
            nxt = ev.next or "end"
            keys = ", ".join(sorted(ev.updates)) or "no updates"
            return ev.node, f"completed in {ev.duration_s:.3f}s ({keys}) -> {nxt}"
        case "node_failed":
            retry = f"retry in {ev.retry_in_s:.1f}s" if ev.retry_in_s is not None else "no retry"
            return ev.node, f"attempt {ev.attempt} failed: {ev.error.message} ({retry})"
        case "effect_intent":
            return ev.node, f"intent {ev.tool} key={ev.key}"
        case "effect_result":
            how = " (found by verify)" if ev.reconciled else ""
            what = json.dumps(ev.result) if ev.ok else ev.error.message if ev.error else ""
            return "", f"effect {'ok' if ev.ok else 'FAILED'}{how}: {what[:80]}"
        case "effect_reconciled":
            return "", f"verify: effect {ev.key} {'applied' if ev.applied else 'not applied'}"
        case "run_paused":
            return "", f"paused ({ev.status}): {ev.reason}"
        case "policy_decided":
            rule = ", ".join(ev.rule)
            return ev.node, f"policy {ev.effect}: {ev.subject} {ev.action} {ev.object} [{rule}]"
        case "proposal_rejected":
            errs = "; ".join(f"{e['field']}: {e['reason']}" for e in ev.errors)
            return ev.node, f"proposal rejected: {errs}"
        case "approval_decided":
            verdict = "approved" if ev.approved else "rejected"
            return ev.node, f"{verdict} by {ev.principal} {ev.reason}".rstrip()
        case "budget_exceeded":
            return "", f"budget {ev.budget} exceeded: {ev.value:g} > {ev.limit:g}"
        case "model_called":
            return ev.node, (
                f"model {ev.model} via {ev.tier} ({ev.worker}): {ev.prompt_tokens}+"
                f"{ev.completion_tokens} tokens, ${ev.cost:.6f}, {ev.latency_s:.2f}s"
            )
        case "run_resumed":
            return "", f"resumed by {ev.by} {ev.reason}".rstrip()
        case "run_finished":
            why = f": {ev.error.message}" if ev.error else f": {ev.reason}" if ev.reason else ""
            return "", f"run {ev.status}{why}"
    return "", ev.type


def print_events(events: Sequence[Event]) -> None:
    for ev in events:
        node, text = describe(ev)
        stamp = time.strftime("%H:%M:%S", time.localtime(ev.ts))
        out.print(
            f"  [dim]#{ev.seq:<3} {stamp}[/dim]  [bold]{escape(node):<14}[/bold] {escape(text)}"
        )


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


def _follow(keel: Any, state: RunState, after_seq: int = 0) -> RunState:
    with out.status(f"running {escape(state.workflow)} ({state.run_id})", spinner="dots"):
        return keel.watch(  # type: ignore[no-any-return]
            state.run_id, lambda evs, _st: print_events(evs), after_seq=after_seq
        )


def cmd_run(args: argparse.Namespace) -> int:
    inputs = parse_inputs(args.input)
    budgets = {
        k if k.startswith("max_") else f"max_{k}": v
        for k, v in parse_inputs(args.budget, "--budget").items()
    }
    with _client(args) as keel:
        if args.detach and keel.config.ray.address is None:
            # The run must outlive this command: make sure an instance hosts it.

            start_background(keel, _cli_storage_args(args))
        state = keel.start(
            args.workflow,
            args.goal,
            inputs,
            run_id=args.run_id,
            principal=acting_principal(keel.config, args.principal),
            budgets=budgets,
        )
        if keel.attached is not None:
            err.print(
                f"keel: attached to the Keel instance already driving this store "
                f"(Ray at {keel.attached.address}, pid {keel.attached.host_pid})"
            )
        out.print(f"started run [bold]{state.run_id}[/bold] ({escape(state.workflow)})")
        if args.detach:
            return EXIT_OK
        return _finish(_follow(keel, state))


SCENARIOS = {
    "bad_config": "a bad config value: the mitigation fixes it",
    "corrupt_data": "corrupt data: the mitigation does not help, so it is rolled back",
}
GOAL = "The checkout service is failing its health checks. Diagnose it and mitigate."


def _follow_approving(keel: Any, state: RunState, auto_approve: bool) -> RunState:
    seen = 0
    while True:
        state = _follow(keel, state, seen)
        seen = state.last_seq
        if state.status != RunStatus.AWAITING_APPROVAL:
            return state
        if not auto_approve:
            return state
        out.print("  [magenta]auto-approved by local (--auto-approve)[/magenta]")
        state = keel.approve(state.run_id, principal="local", reason="--auto-approve")


def cmd_demo(args: argparse.Namespace) -> int:

    keel = Keel(load_config(args.config))
    _apply_storage(keel, args)
    url = keel.config.storage_url()
    base = Path(".keel-demo").resolve() if "://" in url else Path(f"{url}-demo")
    memory = MemoryStore(keel.store.store)
    for item in RUNBOOKS:
        memory.put(item)
    faults = [args.fault] if args.fault else list(SCENARIOS)
    out.print("[bold]Keel demo[/bold]: incident response on a real service, in the sandbox")
    out.print(f"  storage: {url}")
    results: list[tuple[str, RunState, tuple[int, dict[str, Any]], tuple[int, dict[str, Any]]]]
    results = []
    try:
        for fault in faults:
            root = base / fault
            if root.exists():
                shutil.rmtree(root)
            demo_service.prepare(root, fault)
            port = demo_service.free_port()
            proc = demo_service.start(root, port)
            try:
                before = demo_service.health(port)
                out.rule(f"scenario {fault}: {SCENARIOS[fault]}")
                out.print(
                    f"  service on 127.0.0.1:{port}, health {before[0]} {before[1]['status']}"
                )
                state = keel.start("incident", GOAL, {"root": str(root), "port": port})
                out.print(f"started run [bold]{state.run_id}[/bold]")
                final = _follow_approving(keel, state, args.auto_approve)
                after = demo_service.health(port)
                out.print(f"  health before {before[0]} -> after {after[0]} {after[1]['status']}")
                _finish(final)
                results.append((fault, final, before, after))
            finally:
                demo_service.stop(proc)
    finally:
        keel.close()
    out.rule("summary")
    failed = False
    for fault, final, before, after in results:
        out.print(
            f"  {fault:13} run {final.run_id}: {final.status} (health {before[0]} -> {after[0]})"
        )
        failed |= final.status in (RunStatus.FAILED, RunStatus.CANCELLED)
    out.print("  inspect a run: keel show RUN   list runs: keel runs")
    return EXIT_RUN_FAILED if failed else EXIT_OK


def cmd_runs(args: argparse.Namespace) -> int:

    keel = Keel(load_config(args.config))
    _apply_storage(keel, args)
    rows = keel.runs(status=args.status, workflow=args.workflow)
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    table = Table("run", "workflow", "status", "created", "goal / reason")
    for r in rows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.get("created_at", 0)))
        style = _status_style(r["status"])
        table.add_row(
            escape(r["run_id"]),
            escape(r["workflow"]),
            f"[{style}]{escape(r['status'])}[/{style}]",
            created,
            escape(r.get("reason") or r.get("goal", "")),
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
        out.print(f"  pending approval: {escape(json.dumps(st.approval, sort_keys=True))}")
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
    pending: list[Event] = []
    for ev in view.events:
        if ev.type == "node_completed":
            node, _ = describe(ev)
            branch = tree.add(f"[bold]{escape(node)}[/bold] {ev.duration_s * 1000:.1f} ms")
            for inner in pending:
                _, line = describe(inner)
                branch.add(escape(line))
            pending = []
        elif ev.type in ("model_called", "policy_decided", "effect_result", "proposal_rejected"):
            pending.append(ev)
        elif ev.type in ("run_paused", "run_finished", "budget_exceeded", "approval_decided"):
            tree.add(escape(describe(ev)[1]))
    out.print(tree)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    """Deploy the Serve applications of a Serve config file (the one `serve deploy` reads)."""

    try:
        spec = yaml.safe_load(Path(args.serve_config).read_text())
    except OSError as exc:
        raise InputError(
            f"cannot read {args.serve_config}: {exc.strerror}", field="--serve-config"
        ) from None

    try:
        schema = ServeDeploySchema.model_validate(spec)
    except Exception as exc:
        raise InputError(f"not a Serve config: {exc}", field="--serve-config") from None
    keel = Keel(load_config(args.config))
    keel.connect()

    http = schema.http_options
    serve.start(http_options={"host": http.host, "port": http.port})
    for app in schema.applications:
        module, _, attr = app.import_path.rpartition(":")
        builder = getattr(importlib.import_module(module), attr)
        serve.run(builder(dict(app.args or {})), name=app.name, route_prefix=app.route_prefix)
        out.print(f"  {app.name} at http://{http.host}:{http.port}{app.route_prefix}")
    if keel.config.ray.address is not None:
        return EXIT_OK
    out.print("serving on the embedded Ray instance; Ctrl-C stops it")
    try:
        while True:
            time.sleep(3600)
    finally:
        keel.close()


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a suite (or recorded runs with one piece swapped) and write the report."""

    if args.threshold < 0:
        raise InputError("--threshold must be >= 0", field="--threshold")
    if (args.suite is None) == (args.from_runs is None):
        raise InputError(
            "give a suite (a YAML file or a bundled name), or --from-runs QUERY with --swap",
            field="suite",
        )
    if args.from_runs is not None and args.swap is None:
        raise InputError("--from-runs needs --swap KIND=VALUE", field="--swap")
    layers = tuple(x.strip() for x in args.layers.split(",") if x.strip())
    bad = [x for x in layers if x not in LAYERS]
    if bad or not layers:
        raise InputError(f"--layers: one or more of {', '.join(LAYERS)}", field="--layers")
    suite = load_suite(args.suite).only(args.only) if args.suite else None
    baseline = report.load_report(args.baseline) if args.baseline else None
    keel = Keel(load_config(args.config))
    _apply_storage(keel, args)
    out_dir = Path(args.out)
    try:
        if suite is None:
            cf = counterfactual.replay_runs(keel, args.from_runs, args.swap)
            paths = counterfactual.write(cf, out_dir)
            out.print(
                f"{len(cf.runs)} run(s) replayed with {cf.swap.kind}={cf.swap.value}: "
                f"{len(cf.diverging_runs)} would have gone differently"
            )
            for k, v in cf.metrics.items():
                out.print(f"  {k}: {v:g}")
            out.print(f"  report: {paths['markdown']}  json: {paths['json']}")
            return EXIT_OK
        keel.connect()
        result = evaluate(
            keel,
            suite,
            workdir=Path(f"{keel.config.storage_url()}-evals")
            if "://" not in keel.config.storage_url()
            else Path(".keel-evals"),
            layers=layers,
            show_progress=not args.no_progress,
        )
    finally:
        keel.close()
    paths = report.write(result, out_dir)
    code = EXIT_OK if result.passed else EXIT_RUN_FAILED
    for g in result.gates:
        style = "green" if g.ok else "red"
        value = "not measured" if g.value is None else report.fmt(g.value)
        out.print(f"  [{style}]{'ok  ' if g.ok else 'FAIL'}[/{style}] {g.metric} = {value}")
    missed = [s for s in result.scenarios if not s.passed]
    for s in missed:
        out.print(f"  [red]scenario {s.scenario}[/red]: {escape('; '.join(s.misses))[:300]}")
    if baseline is not None:
        cmp = compare.compare(result, baseline, args.threshold)
        (out_dir / "comparison.json").write_text(cmp.model_dump_json(indent=2))
        text = compare.markdown(cmp)
        with open(paths["markdown"], "a") as fh:
            fh.write("\n" + text)
        for d in cmp.deltas:
            if d.verdict in ("improved", "regressed"):
                style = "green" if d.verdict == "improved" else "red"
                out.print(
                    f"  [{style}]{d.verdict}[/{style}] {d.metric}: "
                    f"{report.fmt(d.before or 0)} -> {report.fmt(d.after or 0)}"
                    + ("" if d.gated else " (timing, not gated)")
                )
        if not cmp.ok:
            code = EXIT_RUN_FAILED
            out.print(f"[red]{len(cmp.regressions)} regression(s) against {args.baseline}[/red]")
    verdict = "[green]passed[/green]" if code == EXIT_OK else "[red]failed[/red]"
    out.print(f"eval {suite.name}: {verdict}; report {paths['markdown']}")
    return code


def cmd_batch(args: argparse.Namespace) -> int:
    """Run every task of a JSON-lines file; idempotent by task id."""

    path = Path(args.file)
    tasks, bad = read_tasks(path, args.workflow)
    for b in bad:
        err.print(f"keel: {path}:{b.line}: skipped: {escape(b.reason)}")
    if not tasks:
        raise InputError(f"file {path}: no valid task ({len(bad)} bad line(s))", field="file")
    results_path = Path(args.results) if args.results else path.with_suffix(".results.jsonl")
    keel = Keel(load_config(args.config))
    _apply_storage(keel, args)
    batch = Batch(
        keel,
        tasks,
        concurrency=args.concurrency,
        prefix=args.prefix,
        results=results_path,
        timeout_s=args.timeout,
    )
    done = batch.finished_already()
    if len(done) == len(tasks):
        batch.run()  # rewrites the results file from storage; starts nothing
        out.print(
            f"nothing to do: all {len(tasks)} tasks already finished (results in {results_path})"
        )
        failed = [t for t, e in done.items() if e.get("status") != RunStatus.SUCCEEDED]
        return EXIT_RUN_FAILED if failed or bad else EXIT_OK
    out.print(
        f"{len(tasks)} tasks: {len(done)} already finished, {len(tasks) - len(done)} to run "
        f"({args.concurrency} at a time)"
    )
    keel.connect()
    try:
        with progress_bar(len(tasks), not args.no_progress) as tick:
            results = batch.run(tick)
    finally:
        keel.close(wait_for_attached=_waiting)
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    started = sum(r.outcome == "started" for r in results)
    out.print(
        f"{started} started, {sum(r.outcome == 'followed' for r in results)} followed, "
        f"{sum(r.outcome == 'skipped' for r in results)} skipped; "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        + f"; results in {results_path}"
    )
    unsuccessful = [r for r in results if r.status != RunStatus.SUCCEEDED]
    for r in unsuccessful[:10]:
        out.print(f"  {r.id} ({r.run_id}): {r.status} {escape(r.reason[:200])}")
    return EXIT_RUN_FAILED if unsuccessful or bad else EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as keel:
        keel.show(args.run_id)
        by = acting_principal(keel.config, None)
        return _finish(keel.cancel(args.run_id, by=by, reason=args.reason))


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


def cmd_up(args: argparse.Namespace) -> int:

    with _client(args) as keel:
        if args.detach:
            rec = start_background(keel, _cli_storage_args(args))
            out.print(
                f"Keel instance up for {keel.config.storage_url()}: Ray at {rec.address}, "
                f"pid {rec.host_pid}; log {instance_log(keel)}; stop it with `keel down`"
            )
            return EXIT_OK

        def ready(running: Any) -> None:
            if running is not None:
                out.print(
                    f"an instance already drives {keel.config.storage_url()}: Ray at "
                    f"{running.address}, pid {running.host_pid}"
                )
            else:
                out.print(
                    f"Keel instance up for {keel.config.storage_url()} (pid {os.getpid()}); "
                    "stop it with `keel down` or ^C",
                )

        serve_forever(keel, ready)
    return EXIT_OK


def cmd_down(args: argparse.Namespace) -> int:

    with _client(args) as keel:
        stopped = stop_instance(keel)
    if stopped is None:
        out.print("no Keel instance is running for this store")
    else:
        out.print(f"stopped the Keel instance (pid {stopped.host_pid})")
    return EXIT_OK


def _apply_storage(keel: Any, args: argparse.Namespace) -> None:
    if getattr(args, "storage", None):
        keel.config.storage.url = args.storage
        keel._store = None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="keel", description="Keel: a durable runtime for agents that act.")
    p.add_argument("--config", help="path to keel.yaml (default: ./keel.yaml or $KEEL_CONFIG)")
    p.add_argument("--storage", help="storage URL (overrides config and $KEEL_STORAGE)")
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
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.fn(args)
    except KeelError as exc:
        if isinstance(exc, InputError) or exc.field:
            err.print(f"keel: error: {exc}")
            return EXIT_BAD_INPUT
        err.print(f"keel: {exc.code}: {exc}")
        return EXIT_RUN_FAILED
    except KeyboardInterrupt:
        err.print("interrupted: the run continues from its last checkpoint on `keel resume`")
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
