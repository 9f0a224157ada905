"""The doc runner catches a broken document: a scratch copy of the README with one expected
line changed fails, and so does a block that is neither run nor marked as not run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sybil import Sybil
from sybil.example import SybilFailure

from tests.docs.runner import COUNTS, DocBlocks, session

ROOT = Path(__file__).resolve().parents[2]
BAD_INPUT_SHOWN = "keel: error: inputs.reporter: Input should be a valid string"


@pytest.fixture(autouse=True)
def _counts_stay_the_documents() -> Iterator[None]:
    """These scratch documents do not count in the summary of the real ones."""
    saved = COUNTS.copy()
    yield
    COUNTS.clear()
    COUNTS.update(saved)


def evaluate_until(path: Path, last_line: int) -> None:
    """Run the document's blocks in order, up to the one starting at ``last_line``."""
    namespace: dict[str, Any] = {"workdir": str(path.parent)}
    document = Sybil(parsers=[DocBlocks()]).parse(path)
    for example in document.examples():
        if example.line > last_line:
            break
        example.namespace.update(namespace)
        example.evaluate()


def block_line(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n")


def test_the_readme_as_it_stands_passes_its_first_session(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    copy = tmp_path / "README.md"
    copy.write_text(text)
    evaluate_until(copy, block_line(text, BAD_INPUT_SHOWN))


def test_a_changed_expected_line_fails(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    assert BAD_INPUT_SHOWN in text
    copy = tmp_path / "README.md"
    copy.write_text(text.replace(BAD_INPUT_SHOWN, "keel: error: inputs.reporter: fine"))
    with pytest.raises(SybilFailure, match="the document shows"):
        evaluate_until(copy, block_line(text, BAD_INPUT_SHOWN))


def test_a_block_neither_run_nor_marked_fails(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("Install it:\n\n```sh\npip install keel\n```\n")
    with pytest.raises(SybilFailure, match="not run: why"):
        evaluate_until(doc, 99)
    doc.write_text(
        "Install it:\n\n<!-- not run: needs the network -->\n```sh\npip install keel\n```\n"
    )
    evaluate_until(doc, 99)


@pytest.mark.parametrize(
    ("source", "steps"),
    [
        ("$ echo a\na\n", [("echo a", ["a"])]),
        ("$ printf 'x' \\\n  'y'\nxy\n[exit 0]\n", [("printf 'x' \n  'y'", ["xy", "[exit 0]"])]),
        ("$ true\n$ false\n[exit 1]\n", [("true", []), ("false", ["[exit 1]"])]),
    ],
)
def test_console_sessions_split_into_commands_and_output(
    source: str, steps: list[tuple[str, list[str]]]
) -> None:
    assert session(source) == steps
