"""Casbin model and policies: role confinement, approvals and budgets.

The model (``model.conf``) and the rules (``policy.csv``) are files a security reviewer can
read; ``PolicyEngine`` applies them and reloads them when they change.
"""

from keel.policy.engine import Decision, PolicyEngine

__all__ = ["Decision", "PolicyEngine"]
