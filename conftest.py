"""Doc tests: every fenced block of README.md and docs/*.md (see tests/docs/runner.py)."""

from __future__ import annotations

import pytest
from sybil import Sybil

from tests.docs.runner import COUNTS, DocBlocks, setup, teardown

pytest_collect_file = Sybil(
    parsers=[DocBlocks()],
    patterns=["README.md", "docs/*.md"],
    setup=setup,
    teardown=teardown,
).pytest()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Documents start ``keel`` (and so Ray) in processes of their own: they run in the
    second tier, each document's blocks in order."""
    for item in items:
        if item.path.suffix == ".md":
            item.add_marker(pytest.mark.ray)
            item.add_marker(pytest.mark.docs)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Under xdist the blocks run in a worker: its counts travel back to the controller."""
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output["doc_counts"] = dict(COUNTS)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    COUNTS.update(getattr(node, "workeroutput", {}).get("doc_counts", {}))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if COUNTS:
        ran = COUNTS["python"] + COUNTS["console"]
        terminalreporter.write_line(
            f"doc tests: {ran} blocks ran ({COUNTS['python']} python, {COUNTS['console']} "
            f"console), {COUNTS['file']} files written, {COUNTS['not_run']} marked not run, "
            f"{COUNTS['unmarked']} unmarked"
        )
