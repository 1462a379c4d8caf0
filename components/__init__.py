"""Kubeflow Pipelines components: one per stage, each a thin interface over ``transferops.stages``."""
