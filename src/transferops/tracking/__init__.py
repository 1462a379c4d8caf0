"""Experiment tracking: MLflow for pipeline runs, a null tracker for pure unit tests."""

from transferops.tracking.tracker import PARENT_ENV, MlflowTracker, NullTracker, make_tracker, resolve_tracking_uri

__all__ = ["PARENT_ENV", "MlflowTracker", "NullTracker", "make_tracker", "resolve_tracking_uri"]
