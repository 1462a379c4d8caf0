"""A preempted Kubeflow task resumes: the DAG under kfp.local (retries on) where the finetune task is SIGKILLed
mid-epoch on its first attempt; its training state lives on the S3-protocol server, keyed by run and task, so
the retry (a new process, as a new pod would be) resumes from it and ends with the uninterrupted run's metrics."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from transferops.config import apply_overrides, config_from_dict
from transferops.stages import finetune, ingest, pretrain

pytestmark = [pytest.mark.services, pytest.mark.slow]  # a whole kfp.local run with a kill: ~70 s

SETTINGS = [
    "finetune.epochs=3",
    "finetune.steps_per_epoch=8",
    "finetune.checkpoint_every_steps=2",
    "kfp.backoff_duration=0s",
]


def test_a_killed_finetune_task_is_retried_and_resumes_from_its_state_on_s3(tiny_params, tmp_path, s3, monkeypatch):
    import mlflow

    from pipelines.transfer_pipeline import run_local

    _, client = s3
    client.create_bucket(Bucket="train-state")
    data = apply_overrides(yaml.safe_load(tiny_params.read_text()), SETTINGS + ["base.state_uri=s3://train-state/kfp"])
    data["mlflow"]["tracking_uri"] = ""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data))

    # the uninterrupted reference: the same stages in this process
    cfg = config_from_dict(data)
    ref_cfg = replace(cfg, base=replace(cfg.base, state_uri="", artifacts_dir=str(tmp_path / "ref")))
    for stage in (ingest, pretrain, finetune):
        stage.run(ref_cfg)
    reference = json.loads((tmp_path / "ref" / "finetune" / "history.json").read_text())

    uri = f"sqlite:///{tmp_path / 'kfp-mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("TRANSFEROPS_RUN_KEY", "run-preempted")
    monkeypatch.setenv("TRANSFEROPS_FAULT_KILL_AT", "finetune:11")  # mid-epoch 2, after the step-10 checkpoint
    run_local(params, tmp_path / "root")

    (run,) = [p for p in (tmp_path / "root").iterdir() if p.is_dir()]
    out = run / "finetune" / "target_model"
    assert json.loads((out / "history.json").read_text()) == reference  # identical to the uninterrupted run
    assert json.loads((out / "run.json").read_text())["resumed_from_step"] == 10
    metrics = json.loads((run / "finetune" / "metrics").read_text())
    assert metrics["resumed_from_step"] == 10
    # the state was on S3 under the run and task, and is gone once the task succeeded
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="train-state").get("Contents", [])]
    assert not [k for k in keys if k.startswith("kfp/run-preempted/finetune/state.pt")]
    # one MLflow run for the finetune task, continued by the retry, FINISHED, with resumed_from_step logged
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["transferops"], output_format="list")
    (ft,) = [r for r in runs if r.data.tags.get("transferops.stage") == "finetune"]
    assert ft.info.status == "FINISHED" and ft.data.metrics["resumed_from_step"] == 10
    assert Path(uri[len("sqlite:///") :]).is_file()
