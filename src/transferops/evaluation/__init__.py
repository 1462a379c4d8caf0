"""Metrics (pure functions) and plots."""
