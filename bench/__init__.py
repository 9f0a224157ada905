"""Benchmarks, side by side with peers. Never run as tests; see docs/benchmarks.md.

Set here, before any benchmark imports litellm (import sorting puts it above Keel's
own modules): litellm would otherwise try to fetch its price list from the internet.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")

OUT = Path(__file__).parent / ".out"
ROOT = Path(__file__).resolve().parents[1]
RESULT = "RESULT "


def write_results(name: str, results: Any) -> Path:
    """A benchmark's raw figures as ``bench/.out/NAME.json``, for docs/benchmarks.md."""
    OUT.mkdir(exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(results, indent=2))
    return path


def measure_in_process(module_args: list[str], **how: Any) -> dict[str, Any]:
    """Run ``python -m MODULE ARGS...``, a benchmark measuring in a process (and a Ray) of
    its own, and return what it reported with ``report``; ``how`` goes to
    ``subprocess.run`` (a timeout, a ``preexec_fn``)."""
    out = subprocess.run(
        [sys.executable, "-m", *module_args], cwd=ROOT, capture_output=True, text=True, **how
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    line = next(x for x in out.stdout.splitlines() if x.startswith(RESULT))
    result: dict[str, Any] = json.loads(line.removeprefix(RESULT))
    return result


def report(result: dict[str, Any]) -> None:
    """What a measuring process hands back to ``measure_in_process``."""
    print(RESULT + json.dumps(result), flush=True)
