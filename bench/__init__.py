"""Benchmarks, side by side with peers. Never run as tests; see docs/benchmarks.md.

Set here, before any benchmark imports litellm (import sorting puts it above Keel's
own modules): litellm would otherwise try to fetch its price list from the internet.
"""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")
