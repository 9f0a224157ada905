"""Running simulated schedules: one seed, many seeds over several processes, and the
command line (``python -m keel.testing.simrun``) that replays a failing seed."""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from rich.progress import Progress

from keel.testing.simloop import VirtualTimeLoop
from keel.testing.simulation import Outcome, Simulation


def run_schedule(seed: int, **kwargs: Any) -> Outcome:
    """Run one schedule on its own virtual-time loop."""
    loop = VirtualTimeLoop()
    loop.set_exception_handler(lambda _loop, _ctx: None)
    sim = Simulation(seed, **kwargs)
    try:
        return loop.run_until_complete(sim.main())
    finally:
        loop.close()


def _quiet_schedules(seeds: list[int]) -> list[Outcome]:
    logging.disable(logging.CRITICAL)
    return [run_schedule(seed) for seed in seeds]


def run_many(
    seeds: list[int],
    workers: int = 1,
    on_done: Callable[[list[Outcome]], None] = lambda _outs: None,
) -> list[Outcome]:
    """Run schedules, in ``workers`` processes (each seed still replays exactly alone)."""
    chunks = [seeds[i : i + 50] for i in range(0, len(seeds), 50)]
    outcomes: list[Outcome] = []
    if workers <= 1:
        for chunk in chunks:
            outs = _quiet_schedules(chunk)
            outcomes += outs
            on_done(outs)
        return outcomes
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        for outs in pool.map(_quiet_schedules, chunks):
            outcomes += outs
            on_done(outs)
    return outcomes


def summary_line(outcomes: list[Outcome], took: float) -> str:
    def total(name: str) -> int:
        return sum(getattr(o, name) for o in outcomes)

    failed = sum(1 for o in outcomes if not o.ok)
    return (
        f"{len(outcomes)} schedules in {took:.1f}s: {total('runs')} runs, "
        f"{total('applied')} effects applied, {total('crashes')} crashes, "
        f"{total('takeovers')} takeovers, {total('answers')} people's answers; {failed} failed"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m keel.testing.simrun")
    parser.add_argument("--schedules", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=None, help="replay this one seed")
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="processes to spread over")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.seed is not None:
        logging.basicConfig(level=logging.INFO if args.verbose else logging.CRITICAL)
        out = run_schedule(args.seed)
        print(summary_line([out], 0.0))
        for violation in out.violations:
            print(f"  {violation}")
        return 0 if out.ok else 1
    seeds = list(range(args.first_seed, args.first_seed + args.schedules))
    started = time.monotonic()
    with Progress(transient=True) as progress:
        task = progress.add_task("schedules", total=len(seeds))

        def done(outs: list[Outcome]) -> None:
            for out in outs:
                if not out.ok:
                    progress.console.print(f"seed {out.seed} FAILED: {out.violations[0]}")
            progress.advance(task, len(outs))

        outcomes = run_many(seeds, args.workers, done)
    print(summary_line(outcomes, time.monotonic() - started))
    for out in outcomes:
        if not out.ok:
            print(f"  seed {out.seed}: {'; '.join(out.violations)}")
            print(f"    replay: python -m keel.testing.simrun --seed {out.seed} -v")
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
