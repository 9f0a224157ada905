"""Helpers for testing Keel and workflows built on it: fault injection, simulation."""
