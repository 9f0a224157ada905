"""The Ray adapters: the orchestrator actor that hosts the engine (``keel.runtime``), the
node runner, and the worker pools (planner, retriever, executor, validator)."""
