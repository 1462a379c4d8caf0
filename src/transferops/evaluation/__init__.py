"""Metrics and transferability scores (pure functions) and plots."""
