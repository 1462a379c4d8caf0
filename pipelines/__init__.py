"""The Kubeflow Pipelines DAG (``transfer_pipeline``) and how to compile, run, submit and schedule it."""
