"""The pipeline against a real MLflow server whose artifacts live in S3, and the registry workflow."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.services.conftest import client_env
from transferops.config import load_config
from transferops.data.shards import load_split
from transferops.paths import Paths
from transferops.registry.gate import model_name

pytestmark = pytest.mark.services


def cli(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [sys.executable, "-m", "transferops.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _reg(paths: Paths) -> dict:
    return json.loads((paths.stage("register") / "registration.json").read_text())


def test_pipeline_registry_workflow_against_server_and_s3(tiny_params, tmp_path, mlflow_server, s3):
    import mlflow
    import mlflow.pytorch

    _, s3_client = s3
    text = tiny_params.read_text().replace(f"tracking_uri: sqlite:///{tmp_path / 'mlflow.db'}", "tracking_uri: ''")
    tiny_params.write_text(text)
    env = client_env(mlflow_server)
    p = ["--params", str(tiny_params)]
    cli("run", "--direct", *p, cwd=tmp_path, env=env)
    cfg = load_config(tiny_params)
    paths = Paths.from_config(cfg)
    metrics = json.loads((paths.stage("evaluate") / "metrics.json").read_text())
    reg1 = _reg(paths)
    assert reg1["version"] == "1" and reg1["promoted"] and reg1["tracking_uri"] == mlflow_server

    mlflow.set_tracking_uri(mlflow_server)
    client = mlflow.MlflowClient()
    # runs, nested runs, metrics and plots through the REST API
    runs = mlflow.search_runs(experiment_names=["transferops"], output_format="list")
    parent = next(r for r in runs if r.data.tags.get("transferops.kind") == "pipeline")
    stages = {
        r.data.tags["transferops.stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert set(stages) == {"ingest", "pretrain", "finetune", "evaluate", "register"}
    assert stages["evaluate"].data.metrics["accuracy"] == pytest.approx(metrics["accuracy"])
    history = client.get_metric_history(stages["finetune"].info.run_id, "val_accuracy")
    assert {m.step for m in history if m.step > 0} == set(range(1, cfg.finetune.epochs + 1))  # one per epoch
    plots = {a.path for a in client.list_artifacts(stages["evaluate"].info.run_id, "evaluation")}
    assert {"evaluation/confusion_matrix.png", "evaluation/reliability.png"} <= plots
    # the version: lineage tags, model card, aliases
    mv = client.get_model_version(model_name(cfg), "1")
    for tag in ("git_sha", "params_hash", "source_version", "target_version", "method", "pipeline_run_id"):
        assert mv.tags[f"transferops.{tag}"], tag
    assert mv.tags["transferops.pipeline_run_id"] == parent.info.run_id
    assert "## Known limits" in mv.description and "transfer gain" in mv.description
    # artifacts are in the bucket, put there by the server (the client had no S3 credentials)
    keys = [
        o["Key"]
        for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket="mlflow-artifacts")
        for o in page.get("Contents", [])
    ]
    assert any(k.endswith("confusion_matrix.png") for k in keys) and any("/models/" in k or "model" in k for k in keys)
    # load by alias through the server reproduces the evaluated accuracy
    test = load_split(paths.target_data, "test")
    champion = mlflow.pytorch.load_model(f"models:/{model_name(cfg)}@champion")
    with torch.no_grad():
        acc = float(
            (champion(torch.from_numpy(np.asarray(test.images)).float() / 255).argmax(1).numpy() == test.labels).mean()
        )
    assert acc == pytest.approx(metrics["accuracy"])
    out = cli(
        "predict",
        *p,
        "--model",
        f"models:/{model_name(cfg)}@champion",
        str(_png(tmp_path / "digit.png")),
        cwd=tmp_path,
        env=env,
    ).stdout
    header, row = out.strip().splitlines()
    assert header == "file,predicted,confidence,second,second_confidence"
    label, conf = row.split(",")[1:3]
    assert label in [str(d) for d in range(10)] and 0 < float(conf) <= 1

    # a retried registration creates no new version
    cli("register", *p, cwd=tmp_path, env=env)
    assert _reg(paths)["version"] == "1"
    assert len(client.search_model_versions(f"name = '{model_name(cfg)}'")) == 1

    # a better candidate (longer fine-tuning of the same source model) is promoted
    better = ["--set", "finetune.epochs=6", "--set", "finetune.steps_per_epoch=10"]
    for stage in ("finetune", "evaluate", "register"):
        cli(stage, *p, *better, cwd=tmp_path, env=env)
    reg2 = _reg(paths)
    assert reg2["version"] == "2" and reg2["promoted"], reg2
    assert reg2["champion_accuracy"] == metrics["accuracy"]  # v1 re-scored through the server, not trusted
    # a candidate that does not clear the champion + min_delta is not promoted; champion untouched
    cli("register", *p, *better, "--set", "register.min_delta=0.5", cwd=tmp_path, env=env)
    reg3 = _reg(paths)
    assert reg3["version"] == "3" and not reg3["promoted"] and reg3["aliases"] == ["challenger"]
    assert str(client.get_model_version_by_alias(model_name(cfg), "champion").version) == "2"
    # rollback restores the previous champion; history lists every champion move
    cli("registry", "rollback", *p, cwd=tmp_path, env=env)
    assert str(client.get_model_version_by_alias(model_name(cfg), "champion").version) == "1"
    history = cli("registry", "history", *p, cwd=tmp_path, env=env).stdout
    champion_moves = [line for line in history.splitlines() if " champion " in line]
    assert len(champion_moves) == 3
    assert "rollback" in champion_moves[-1] and "2 -> 1" in champion_moves[-1]


def _png(path: Path) -> Path:
    from PIL import Image, ImageDraw

    img = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(img).line([(14, 4), (14, 24)], fill=255, width=3)
    img.save(path)
    return path


def test_concurrent_registrations_keep_both_and_champion_on_the_better(tiny_params, tmp_path, mlflow_server):
    import mlflow

    from transferops.config import apply_overrides
    from transferops.stages import evaluate, finetune, ingest, pretrain

    base = yaml.safe_load(tiny_params.read_text())
    budgets = {
        "weak": ["finetune.epochs=1", "finetune.steps_per_epoch=1"],
        "strong": ["finetune.epochs=6", "finetune.steps_per_epoch=10"],
    }
    files = {}
    for name, sets in budgets.items():
        data = apply_overrides(
            base,
            sets
            + [
                f"base.artifacts_dir={tmp_path / name}",
                "mlflow.tracking_uri=''",
                "register.model_name=concurrent-digits",
                "register.min_accuracy=0.0",
                "evaluate.from_scratch_baseline=false",
            ],
        )
        files[name] = tmp_path / f"{name}.yaml"
        files[name].write_text(yaml.safe_dump(data))
        cfg = load_config(files[name])
        for stage in (ingest, pretrain, finetune, evaluate):
            stage.run(cfg)
    env = client_env(mlflow_server)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "transferops.cli", "register", "--params", str(f)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for f in files.values()
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    regs = {n: _reg(Paths.from_config(load_config(f))) for n, f in files.items()}
    assert {r["version"] for r in regs.values()} == {"1", "2"}
    accs = {n: r["candidate_accuracy"] for n, r in regs.items()}
    assert accs["strong"] > accs["weak"]
    mlflow.set_tracking_uri(mlflow_server)
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("concurrent-digits", "champion").version) == regs["strong"]["version"]
    from transferops.registry.aliases import history

    events = history(client, "concurrent-digits")
    assert {e["to_version"] for e in events if e["alias"] == "challenger"} == {"1", "2"}
    decided = {
        v.version: v.tags["transferops.gate_reason"] for v in client.search_model_versions("name = 'concurrent-digits'")
    }
    assert len(decided) == 2 and all(decided.values())
