"""The commands that run things at scale or host them: the demo, serve, batch, eval,
and the embedded instance (up, down)."""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

import yaml
from ray import serve
from ray.serve.schema import ServeDeploySchema
from rich.markup import escape

from keel.batch import Batch, progress_bar, read_tasks
from keel.cli.common import (
    EXIT_OK,
    EXIT_RUN_FAILED,
    _apply_storage,
    _cli_storage_args,
    _client,
    _finish,
    _waiting,
    err,
    out,
)
from keel.cli.render import _follow
from keel.client import Keel
from keel.config import load_config
from keel.core.events import RunStatus
from keel.core.registry import resolve_ref
from keel.core.state import RunState
from keel.errors import InputError
from keel.evals import compare, counterfactual, report
from keel.evals.run import LAYERS, evaluate
from keel.evals.suite import load_suite
from keel.examples import demo_service
from keel.examples.incident import RUNBOOKS
from keel.instance import instance_log, serve_forever, start_background, stop_instance
from keel.storage.memory import MemoryStore

SCENARIOS = {
    "bad_config": "a bad config value: the mitigation fixes it",
    "corrupt_data": "corrupt data: the mitigation does not help, so it is rolled back",
}

GOAL = "The checkout service is failing its health checks. Diagnose it and mitigate."


def _follow_approving(keel: Any, state: RunState, auto_approve: bool) -> RunState:
    """Follow a demo run to its end. At an approval, approve it (``--auto-approve``) or wait
    for a person's answer from another terminal: the demo's service and instance stay up
    meanwhile, so what the person approves acts on them."""
    seen = 0
    while True:
        state = _follow(keel, state, seen)
        seen = state.last_seq
        if state.status != RunStatus.AWAITING_APPROVAL:
            return state
        if auto_approve:
            out.print("  [magenta]auto-approved by local (--auto-approve)[/magenta]")
            state = keel.approve(state.run_id, principal="local", reason="--auto-approve")
            continue
        out.print(
            f"  [magenta]waiting for a person[/magenta]: in another terminal, "
            f"keel approve {state.run_id} --as alice  (or keel reject {state.run_id} "
            "--reason TEXT); the service stays up until then, Ctrl-C stops the demo"
        )
        while state.status == RunStatus.AWAITING_APPROVAL:
            time.sleep(1.0)
            state = keel.show(state.run_id).state


def cmd_demo(args: argparse.Namespace) -> int:

    keel = Keel(load_config(args.config))
    _apply_storage(keel, args)
    url = keel.config.storage_url()
    base = keel.config.workdir("demo")
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
        url = f"http://{http.host}:{http.port}{app.route_prefix}"
        out.print(f"  {app.name} at {url}")
        if module == "keel.server.runs_api":
            out.print(f"  the console at {url.rstrip('/')}/console/ (sign in with an API key)")
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
            workdir=keel.config.workdir("evals"),
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
    for ref in sorted({str(t.workflow) for t in tasks}):
        resolve_ref(ref, keel.config.workflows)  # a broken workflow stops the batch up front
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
