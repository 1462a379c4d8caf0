"""The whole DAG executed by kfp.local (real subprocesses, real MLflow store), on the tiny config (the default
DAG's run is in tests/integration/test_runtimes.py, beside the other runtimes)."""

import json
from pathlib import Path

import pytest

pytest.importorskip("kfp")


def _run_dir(root: Path) -> Path:
    (run,) = [p for p in root.iterdir() if p.is_dir()]
    return run


@pytest.mark.slow  # a whole kfp.local run (~55 s); the gate itself is tested in tests/unit/test_registry.py
def test_failing_gate_registers_nothing(tiny_params, tmp_path, monkeypatch):
    import mlflow

    from pipelines.transfer_pipeline import run_local

    uri = f"sqlite:///{tmp_path / 'kfp-mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run_local(tiny_params, tmp_path / "root", {"overrides": ["register.min_accuracy=1.0"]})
    run = _run_dir(tmp_path / "root")
    assert (run / "evaluate" / "metrics").is_file()
    reg = json.loads((run / "register" / "registration" / "registration.json").read_text())
    assert reg["registered"] is False and reg["version"] is None and "min_accuracy" in reg["reason"]
    mlflow.set_tracking_uri(uri)
    assert mlflow.MlflowClient().search_model_versions("name = 'transferops-digits'") == []


@pytest.mark.slow  # a whole kfp.local run (~55 s); the wiring itself is checked in test_compile.py
def test_source_free_dag_runs_without_the_source_data_reaching_finetune(tiny_params, tmp_path, monkeypatch):
    """Compiled for ``shot`` at k = 0, the finetune task is given no source data and still adapts."""
    from pipelines.transfer_pipeline import run_local

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'kfp-mlflow.db'}")
    sets = ["finetune.method=shot", "ingest.target.split.labels_per_class=0"]
    run_local(tiny_params, tmp_path / "root", overrides=sets)
    run = _run_dir(tmp_path / "root")
    metrics = json.loads((run / "evaluate" / "metrics").read_text())
    assert metrics["method"] == "shot" and metrics["labels_per_class"] == 0
    assert metrics["accuracy"] > 0.1
