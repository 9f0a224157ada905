"""What the incident workflow learns from its earlier runs on a service (no Ray, no
service): the one case where it does not mitigate at all is an earlier run that saw the
same problems, applied a mitigation, and left health failing."""

from __future__ import annotations

from typing import Any

import pytest

from keel.examples.incident import IncidentState, learn
from keel.runtime.episodes import Attempt, EpisodeFacts

PROBLEMS = ["data/orders.db checksum mismatch: data corrupt"]
RESTART = Attempt(
    node="mitigate.call", tool="restart_service", args={"config_action": "restore_last_good"},
    ok=True,
)  # fmt: skip


def facts(
    *,
    problems: list[str] = PROBLEMS,
    after: int = 503,
    tried: Any = (RESTART,),
    wf: str = "incident",
) -> EpisodeFacts:
    return EpisodeFacts(
        run_id="r-1",
        workflow=wf,
        status="needs_human",
        tried=list(tried),
        signals={
            "label": "overload",
            "health_before": {"code": 503, "problems": problems},
            "health_after": {"code": after},
        },
    )


NOW = IncidentState(label="data_corruption", health_before={"code": 503, "problems": PROBLEMS})


@pytest.mark.parametrize(
    ("episode", "avoided"),
    [
        (facts(), True),  # same problems, restart ran, still failing: not repeated
        (facts(after=200), False),  # it helped then: the agent may do it again
        (facts(problems=["connection overload"]), False),  # other symptoms
        (facts(tried=[RESTART.model_copy(update={"ok": False})]), False),  # it never ran
        (facts(tried=[RESTART.model_copy(update={"ok": None})]), False),  # refused
        (facts(tried=[]), False),  # nothing was tried
        (facts(wf="other"), False),  # another workflow's episode
    ],
)
def test_only_a_mitigation_that_ran_and_did_not_help_is_avoided(
    episode: EpisodeFacts, avoided: bool
) -> None:
    lines, failure = learn(NOW, [episode])
    assert bool(failure) is avoided
    if avoided:
        assert "r-1" in failure and "restart_service" in failure and "not repeated" in failure
    # the label the model gave differs (overload vs data_corruption): symptoms decide
    assert all("r-1" in line for line in lines) and len(lines) == (episode.workflow == "incident")
