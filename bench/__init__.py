"""Benchmarks, side by side with peers. Never run as tests; see docs/benchmarks.md."""
