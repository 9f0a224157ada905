"""Comparing a report with a baseline: what improved, what regressed, and whether to
stop a deploy.

A metric regresses when it moved the wrong way by more than the threshold: in absolute
terms for a share (0 to 1), relative to the baseline (at least 1) for counts and costs.
Timings are compared and shown but never fail the comparison (see ``report.NOISY``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from keel.evals.report import NOISY, Report, direction, fmt

Verdict = Literal["improved", "regressed", "unchanged", "changed", "new", "gone"]


class Delta(BaseModel):
    metric: str
    before: float | None
    after: float | None
    change: float | None
    verdict: Verdict
    gated: bool


class Comparison(BaseModel):
    baseline: str
    threshold: float
    deltas: list[Delta]

    @property
    def regressions(self) -> list[Delta]:
        return [d for d in self.deltas if d.verdict == "regressed" and d.gated]

    @property
    def ok(self) -> bool:
        return not self.regressions


def _is_share(metric: str) -> bool:
    return direction(metric) == "higher"


def compare(current: Report, baseline: Report, threshold: float = 0.05) -> Comparison:
    if threshold < 0:
        raise ValueError("threshold must be >= 0")
    deltas: list[Delta] = []
    for name in sorted(set(current.metrics) | set(baseline.metrics)):
        before, after = baseline.metrics.get(name), current.metrics.get(name)
        gated = not any(w in name for w in NOISY)
        if before is None or after is None:
            verdict: Verdict = "new" if before is None else "gone"
            deltas.append(
                Delta(
                    metric=name,
                    before=before,
                    after=after,
                    change=None,
                    verdict=verdict,
                    gated=gated,
                )
            )
            continue
        change = after - before
        scale = 1.0 if _is_share(name) else max(abs(before), 1.0)
        moved = abs(change) / scale > threshold
        way = direction(name)
        if change == 0 or not moved:
            verdict = "unchanged"
        elif way == "neutral":
            verdict = "changed"
        elif (change > 0) == (way == "higher"):
            verdict = "improved"
        else:
            verdict = "regressed"
        deltas.append(
            Delta(
                metric=name, before=before, after=after, change=change, verdict=verdict, gated=gated
            )
        )
    return Comparison(baseline=baseline.suite, threshold=threshold, deltas=deltas)


def markdown(c: Comparison) -> str:
    lines = [
        f"## Against the baseline (threshold {fmt(c.threshold)})",
        "",
        f"**{'no regression' if c.ok else f'{len(c.regressions)} regression(s)'}**",
        "",
        "| metric | baseline | now | change | verdict |",
        "|---|---|---|---|---|",
    ]
    for d in c.deltas:
        if d.verdict == "unchanged":
            continue
        note = "" if d.gated else " (timing, not gated)"
        lines.append(
            f"| {d.metric} | {'' if d.before is None else fmt(d.before)} | "
            f"{'' if d.after is None else fmt(d.after)} | "
            f"{'' if d.change is None else f'{d.change:+.6g}'} | {d.verdict}{note} |"
        )
    unchanged = sum(1 for d in c.deltas if d.verdict == "unchanged")
    lines += ["", f"{unchanged} metric(s) unchanged.", ""]
    return "\n".join(lines)
