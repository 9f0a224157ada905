"""The model router on Ray Serve: the cheapest tier that fits, litellm behind it.

litellm would fetch its price list from the internet on import; Keel runs offline and
uses the copy litellm ships, so that is switched off before litellm is first imported.
"""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")
