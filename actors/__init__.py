"""Ray actors and the durable run loop they share: the orchestrator owns every run's state."""
