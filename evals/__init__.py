"""Evaluation at three layers, each from what runs record: the model tiers on a prompt set,
the components (routing, arguments, retrieval, policy, proposals) on their own cases, and
whole trajectories read from their ledgers."""
