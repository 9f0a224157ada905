"""Benchmarks, side by side with peers. Never run as tests; see docs/benchmarks.md.

Set here, before any benchmark imports litellm (import sorting puts it above Keel's
own modules): litellm would otherwise try to fetch its price list from the internet.
"""

import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")

OUT = Path(__file__).parent / ".out"


def write_results(name: str, results: Any) -> Path:
    """A benchmark's raw figures as ``bench/.out/NAME.json``, for docs/benchmarks.md."""
    OUT.mkdir(exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(results, indent=2))
    return path
