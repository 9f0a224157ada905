"""The engine under the deterministic simulator: thousands of seeded schedules of crashes,
lost executors, slow and stuck effects, storage failures, frozen processes and people's
answers, each checked against the tool's own counters. A failing seed is named with the
command that replays it."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from keel.testing.simloop import VirtualTimeLoop
from keel.testing.simrun import run_many, run_schedule, summary_line
from keel.testing.simulation import Simulation

SCHEDULES = int(os.environ.get("KEEL_SIM_SCHEDULES", "1000"))


@pytest.mark.slow
def test_thousands_of_schedules_keep_every_invariant() -> None:
    started = time.monotonic()
    outcomes = run_many(list(range(1, SCHEDULES + 1)), workers=2)
    line = summary_line(outcomes, time.monotonic() - started)
    print(line)
    failed = [o for o in outcomes if not o.ok]
    assert len(outcomes) == SCHEDULES
    assert not failed, "\n".join(
        f"seed {o.seed}: {o.violations[0]} "
        f"(replay: python -m keel.testing.simrun --seed {o.seed} -v)"
        for o in failed[:10]
    )
    # The schedules did the damage they are meant to do.
    assert sum(o.crashes for o in outcomes) > SCHEDULES
    assert sum(o.takeovers for o in outcomes) > SCHEDULES / 10
    assert sum(o.answers for o in outcomes) > SCHEDULES


def test_a_seed_replays_exactly() -> None:
    first, again = run_schedule(7), run_schedule(7)
    assert first == again


def test_the_checks_catch_a_double_application() -> None:
    """The invariants are not vacuous: a world where one effect landed twice fails them."""

    loop = VirtualTimeLoop()
    sim = Simulation(3)
    try:
        loop.run_until_complete(sim.main())
        key = next(iter(sim.world.applied))
        sim.world.applied[key] += 1
        sim.outcome.violations.clear()
        sim._check()
    finally:
        loop.close()
        asyncio.set_event_loop(None)
    assert any("applied 2 times" in v for v in sim.outcome.violations)
