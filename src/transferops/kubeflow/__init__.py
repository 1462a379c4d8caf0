"""Kubeflow adapters: code only the Kubeflow path needs (Trainer jobs, Katib experiments)."""
