"""The whole pipeline through the CLI on a tiny config, with a real sqlite MLflow store."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from transferops.config import load_config
from transferops.data.shards import load_split
from transferops.paths import Paths
from transferops.registry.gate import model_name


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "transferops.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow  # ~35 s of subprocesses; `run --direct`, the registry and predict by alias are also in
# tests/integration/test_runtimes.py and tests/services/test_mlflow_server.py, which make test runs
def test_cli_pipeline_registers_a_champion_that_reproduces_its_accuracy(tiny_params, tmp_path):
    import mlflow
    import mlflow.pytorch

    r = cli("run", "--direct", "--params", str(tiny_params), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "transferops pipeline summary" in r.stdout and "transfer gain" in r.stdout
    cfg = load_config(tiny_params)
    name = model_name(cfg)
    assert name == "transferops-digits"  # derived from the embedded target
    paths = Paths.from_config(cfg)
    metrics = json.loads((paths.stage("evaluate") / "metrics.json").read_text())
    for key in (
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "ece",
        "source_only_accuracy",
        "from_scratch_accuracy",
        "transfer_gain",
        "n_test",
    ):
        assert key in metrics
    assert metrics["transfer_gain"] == pytest.approx(metrics["accuracy"] - metrics["from_scratch_accuracy"])
    assert 0.0 <= metrics["ece"] <= 1.0 and metrics["n_test"] == len(load_split(paths.target_data, "test"))
    for png in ("confusion_matrix.png", "reliability.png"):
        assert (paths.stage("evaluate") / png).read_bytes()[:4] == b"\x89PNG"

    reg = json.loads((paths.stage("register") / "registration.json").read_text())
    assert reg["model_name"] == name and reg["version"] == "1"
    assert reg["promoted"] is True and reg["aliases"] == ["challenger", "champion"]

    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    client = mlflow.MlflowClient()
    assert client.get_model_version_by_alias(name, "champion").version in ("1", 1)
    version = client.get_model_version(name, "1")
    assert (
        version.tags["transferops.target_version"]
        == json.loads((paths.target_data / "manifest.json").read_text())["version"]
    )
    assert "transfer gain" in version.description
    champion = mlflow.pytorch.load_model(f"models:/{name}@champion")
    test = load_split(paths.target_data, "test")
    import torch

    with torch.no_grad():
        logits = champion(torch.from_numpy(np.asarray(test.images)).float() / 255)
    assert float((logits.argmax(1).numpy() == test.labels).mean()) == pytest.approx(metrics["accuracy"])

    # one parent run with a nested run per stage
    runs = mlflow.search_runs(experiment_names=[cfg.mlflow.experiment], output_format="list")
    parents = [x for x in runs if x.data.tags.get("transferops.kind") == "pipeline"]
    assert len(parents) == 1
    children = {
        x.data.tags["transferops.stage"]
        for x in runs
        if x.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id
    }
    assert children == {"ingest", "pretrain", "finetune", "baseline", "evaluate", "register"}

    # a retried register creates no new version; a stricter gate registers but does not promote
    again = cli("register", "--params", str(tiny_params), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((paths.stage("register") / "registration.json").read_text())["version"] == "1"
    strict = cli("register", "--params", str(tiny_params), "--set", "register.min_delta=0.5", cwd=tmp_path)
    assert strict.returncode == 0, strict.stderr[-2000:]
    reg2 = json.loads((paths.stage("register") / "registration.json").read_text())
    assert reg2["version"] == "2" and reg2["promoted"] is False and reg2["aliases"] == ["challenger"]
    assert "< champion v1" in reg2["reason"]
    assert reg2["champion_accuracy"] == metrics["accuracy"]  # v1 re-scored now through MLflow, exactly
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    # a tolerant gate promotes an equal candidate, and the promotion sticks (nothing settles it back)
    tolerant = cli("register", "--params", str(tiny_params), "--set", "register.min_delta=-0.01", cwd=tmp_path)
    assert tolerant.returncode == 0, tolerant.stderr[-2000:]
    reg3 = json.loads((paths.stage("register") / "registration.json").read_text())
    assert reg3["version"] == "3" and reg3["promoted"] is True and "champion" in reg3["aliases"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == "3"


def test_bad_params_fail_with_one_line_and_write_nothing(tiny_params, tmp_path):
    r = cli("ingest", "--params", str(tiny_params), "--set", "ingest.imagesize=3", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "'ingest.imagesize'" in r.stderr
    assert not (tmp_path / "artifacts").exists()


def test_same_seed_same_metrics(tiny_cfg, tmp_path):
    from dataclasses import replace

    from transferops.stages import graph, run_pipeline
    from transferops.tracking import NullTracker

    results = []
    for name in ("a", "b"):
        cfg = replace(tiny_cfg, base=replace(tiny_cfg.base, artifacts_dir=str(tmp_path / name)))
        run_pipeline(cfg, lambda _: NullTracker(), graph.upstream("evaluate"))
        results.append(json.loads((tmp_path / name / "evaluate" / "metrics.json").read_text()))
    assert results[0] == results[1] and results[0]["from_scratch_accuracy"] is not None
    assert results[0]["accuracy"] > 0.3  # 10 classes: far above chance even on the tiny budget
    a = np.load(tmp_path / "a" / "ingest" / "target" / "test-000.images.npy")
    assert np.array_equal(a, np.load(tmp_path / "b" / "ingest" / "target" / "test-000.images.npy"))
