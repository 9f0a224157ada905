"""Evaluation at three layers: model, component, trajectory (see issue 7)."""
