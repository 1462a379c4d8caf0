"""The whole DAG executed by kfp.local (real subprocesses, real MLflow store), on the tiny config."""

import json
from pathlib import Path

import pytest

pytest.importorskip("kfp")


def _run_dir(root: Path) -> Path:
    (run,) = [p for p in root.iterdir() if p.is_dir()]
    return run


def test_dag_runs_end_to_end_and_registers(tiny_params, tmp_path, monkeypatch):
    import mlflow

    from pipelines.transfer_pipeline import run_local

    uri = f"sqlite:///{tmp_path / 'kfp-mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    params = tiny_params.read_text().replace(f"tracking_uri: sqlite:///{tmp_path / 'mlflow.db'}", "tracking_uri: ''")
    tiny_params.write_text(params)
    run_local(tiny_params, tmp_path / "root")
    run = _run_dir(tmp_path / "root")
    manifest = json.loads((run / "ingest" / "target_data" / "manifest.json").read_text())
    assert manifest["splits"]["labeled"]["count"] == 20  # 2 labels per class, from the tiny params
    assert (run / "pretrain" / "source_model" / "model.pt").is_file()
    assert (run / "finetune" / "target_model" / "model.pt").is_file()
    metrics = json.loads((run / "evaluate" / "metrics").read_text())
    assert metrics["transfer_gain"] == pytest.approx(metrics["accuracy"] - metrics["from_scratch_accuracy"])
    assert '<img src="data:image/png;base64,' in (run / "evaluate" / "report").read_text()
    reg = json.loads((run / "register" / "registration" / "registration.json").read_text())
    assert reg["promoted"] is True and reg["version"] == "1"
    mlflow.set_tracking_uri(uri)
    mv = mlflow.MlflowClient().get_model_version_by_alias("transferops-digits", "champion")
    assert float(mv.tags["transferops.accuracy"]) == pytest.approx(metrics["accuracy"], abs=1e-6)


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
