"""Evaluation at three layers, each from what runs record: the model tiers on a prompt set,
the components (routing, arguments, retrieval, policy, proposals) on their own cases, and
whole trajectories read from their ledgers.

Set here, before any evaluation imports litellm (import sorting puts it above Keel's own
modules): litellm would otherwise try to fetch its price list from the internet.
"""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")
