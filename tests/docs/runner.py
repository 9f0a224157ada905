"""Every fenced block of README.md and docs/ is run, or visibly marked as not run.

How a block is treated follows from its fence:

- ```` ```python file=NAME ```` and ```` ```yaml file=NAME ```` are written to the
  document's working folder, as the reader would save them;
- ```` ```python ```` runs as a script in that folder, in a fresh interpreter;
- ```` ```console ```` runs each ``$ command`` there with the real ``keel`` on PATH, and
  compares what it prints with the lines that follow (``...`` matches anything; a last line
  ``[exit N]`` says the command exits N, otherwise it must exit 0);
- any other block must sit right under ``<!-- not run: why -->``.

Each document gets one empty folder and its blocks run in order, so a document reads (and
runs) like a session at a terminal.
"""

from __future__ import annotations

import doctest
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sybil import Document, Example, Region
from sybil.parsers.markdown.lexers import RawFencedCodeBlockLexer

BIN = Path(sys.executable).parent
INFO = re.compile(r"(?P<language>[\w-]*)[ \t]*(?P<arguments>[^\n]*)$\n", re.MULTILINE)
NOT_RUN = re.compile(r"<!--\s*not run:\s*\S.*?-->\s*$", re.DOTALL)
EXIT = re.compile(r"^\[exit (\d+)\]$")
TIMEOUT_S = 300
COUNTS: Counter[str] = Counter()  # blocks evaluated in this session, by kind


@dataclass(frozen=True)
class Block:
    kind: str  # file, python, console, not_run, unmarked
    source: str
    name: str = ""


def _env(workdir: str) -> dict[str, str]:
    """The reader's environment: the project's own interpreter and ``keel`` first on PATH,
    nothing the test suite set for itself (its policy, its tool roots)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEEL_", "PYTEST"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=workdir,
        COLUMNS="100",
        NO_COLOR="1",
        TERM="dumb",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
    )
    return env


class DocBlocks:
    """The Sybil parser: one region per fenced block."""

    def __init__(self) -> None:
        self.lexer = RawFencedCodeBlockLexer(info_pattern=INFO)

    def __call__(self, document: Document) -> Iterable[Region]:
        for region in self.lexer(document):
            lexemes = region.lexemes
            language = str(lexemes.get("language") or "")
            args = dict(
                a.split("=", 1) for a in str(lexemes.get("arguments") or "").split() if "=" in a
            )
            source = str(lexemes["source"])
            if "file" in args and language in ("python", "yaml", "csv"):
                block = Block("file", source, args["file"])
            elif language in ("python", "console"):
                block = Block(language, source)
            else:
                before = document.text[: region.start].rstrip()
                last = before[before.rfind("<!--") :] if "<!--" in before else ""
                marked = bool(last) and NOT_RUN.fullmatch(last) is not None
                block = Block("not_run" if marked else "unmarked", source, language)
            yield Region(region.start, region.end, block, evaluate)


def evaluate(example: Example) -> str | None:
    block: Block = example.parsed
    workdir = Path(example.namespace["workdir"])
    COUNTS[block.kind] += 1
    if block.kind == "unmarked":
        return (
            f"a ```{block.name} block that is not run needs <!-- not run: why --> "
            "on the line above it"
        )
    if block.kind == "file":
        target = workdir / block.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(block.source)
        return None
    if block.kind == "python":
        done = subprocess.run(
            [sys.executable, "-c", block.source],
            cwd=workdir,
            env=_env(str(workdir)),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        if done.returncode != 0:
            return f"the block exited {done.returncode}:\n{done.stdout}{done.stderr}"
        return None
    if block.kind == "console":
        return run_console(block.source, workdir)
    return None


def session(source: str) -> list[tuple[str, list[str]]]:
    """``$ command`` lines (with ``\\`` continuations) and the output shown under each."""
    steps: list[tuple[str, list[str]]] = []
    lines = source.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("$ "):
            if steps:
                steps[-1][1].append(line)
            elif line.strip():
                raise ValueError(f"console block: output before any command: {line!r}")
            i += 1
            continue
        command = line[2:]
        while command.endswith("\\") and i + 1 < len(lines):
            i += 1
            command = command[:-1] + "\n" + lines[i]
        steps.append((command, []))
        i += 1
    return steps


_CHECKER = doctest.OutputChecker()
_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def run_console(source: str, workdir: Path) -> str | None:
    for command, shown in session(source):
        expected_exit = 0
        if shown and EXIT.match(shown[-1].strip()):
            expected_exit = int(EXIT.match(shown[-1].strip()).group(1))  # type: ignore[union-attr]
            shown = shown[:-1]
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=workdir,
            env=_env(str(workdir)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=TIMEOUT_S,
        )
        want = "\n".join(shown).strip()
        got = done.stdout
        if done.returncode != expected_exit:
            return (
                f"$ {command}\nexited {done.returncode}, the document says {expected_exit}:\n{got}"
            )
        if want and not _CHECKER.check_output(want + "\n", got, _FLAGS):
            return f"$ {command}\nthe document shows:\n{want}\nbut it printed:\n{got}"
    return None


def setup(namespace: dict[str, Any]) -> None:
    namespace["workdir"] = tempfile.mkdtemp(prefix="keel-docs-")


def teardown(namespace: dict[str, Any]) -> None:
    workdir = namespace["workdir"]
    # An instance a document left up (``keel up --detach``) goes down with it.
    subprocess.run(
        [str(BIN / "keel"), "down"],
        cwd=workdir,
        env=_env(workdir),
        capture_output=True,
        timeout=120,
        check=False,
    )
    shutil.rmtree(workdir, ignore_errors=True)
