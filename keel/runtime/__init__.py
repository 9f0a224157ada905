"""The engine, free of Ray: pure decisions, the run log, the effect protocol, leases and
the step loop; the orchestrator actor hosts it, and the simulator and tests run it alone."""
