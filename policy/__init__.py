"""Casbin model and policies: role confinement, approvals and budgets (see issue 4)."""
