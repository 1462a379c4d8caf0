"""A training task as a Kubeflow Trainer job, end to end on loopback: the task stages its inputs on the S3 server,
creates the TrainJob on a fake Kubernetes API server, follows it and takes the outputs back into its workspace.
The fake API runs the job's command (``transferops remote-stage``) in this process, as the job's pods would."""

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.kube_fake import KubeServer
from transferops.errors import TrainingError
from transferops.kubeflow.launch import Launch, remote_stage, run, staging_uri
from transferops.stages import finetune, ingest, pretrain

pytestmark = pytest.mark.services

SETTINGS = {
    "image": "ghcr.io/transferops/transferops:test",
    "namespace": "ml",
    "nodes": 2,
    "gpus_per_node": 4,
    "runtime": "torch-distributed",
    "resources": {"limits": {"nvidia.com/gpu": 4}},
    "node_selector": {"pool": "a100"},
    "tolerations": [],
    "secret_env": [["mlflow-credentials", {"tracking_uri": "MLFLOW_TRACKING_URI"}]],
    "shm_size": "8Gi",
    "timeout_hours": 0.05,
    "poll_seconds": 0.2,
}
COMPLETE = {"conditions": [{"type": "Complete", "status": "True", "reason": "JobSetCompleted", "message": "done"}]}


def _prepared(tiny_cfg, tmp_path, s3, monkeypatch):
    _, client = s3
    client.create_bucket(Bucket="state")
    monkeypatch.setenv("TRANSFEROPS_RUN_KEY", "run-42")
    cfg = replace(tiny_cfg, base=replace(tiny_cfg.base, state_uri="s3://state/kfp"))
    for stage in (ingest, pretrain):
        stage.run(cfg)
    ws = tmp_path / "ws"
    ws.mkdir()
    for part in ("ingest", "pretrain"):
        (ws / part).symlink_to(Path(cfg.base.artifacts_dir) / part, target_is_directory=True)
    return cfg, ws


def _job_runner(fake, cfg, outcome: dict):
    """Play the job's pods: once the TrainJob exists, run its command here, then report its condition."""

    def play():
        deadline = time.time() + 120
        while time.time() < deadline:
            posts = [r for r in fake.calls("POST") if r.path.endswith("/trainjobs")]
            if posts:
                job = posts[0].body
                trainer = job["spec"]["trainer"]
                assert trainer["command"][:5] == ["torchrun", "--no-python", "transferops", "remote-stage", "finetune"]
                staging = trainer["command"][trainer["command"].index("--staging") + 1]
                if outcome.get("fail"):
                    status = {
                        "conditions": [
                            {"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "OOMKilled"}
                        ]
                    }
                else:
                    remote_stage("finetune", staging)
                    status = COMPLETE
                name = job["metadata"]["name"]
                fake.at_get("trainjobs", name, fake.gets[("trainjobs", name)] + 1, status)
                outcome["job"] = job
                return
            time.sleep(0.05)

    thread = threading.Thread(target=play, daemon=True)
    thread.start()
    return thread


def test_a_training_stage_runs_as_a_trainjob_and_its_outputs_come_back(tiny_cfg, tmp_path, s3, monkeypatch):
    from kubernetes import client

    cfg, ws = _prepared(tiny_cfg, tmp_path, s3, monkeypatch)
    with KubeServer() as server:
        api = client.ApiClient(client.Configuration(host=server.url))
        outcome: dict = {}
        thread = _job_runner(server.fake, cfg, outcome)
        result = run("finetune", cfg, ws, Launch(trainjob=SETTINGS), api_client=api)
        thread.join(5)
        deleted = [r for r in server.fake.calls("DELETE") if "/trainjobs/" in r.path]
    job = outcome["job"]
    assert job["spec"]["trainer"]["numNodes"] == 2 and job["spec"]["trainer"]["numProcPerNode"] == 4
    assert {"name": "TRANSFEROPS_RUN_KEY", "value": "run-42"} in job["spec"]["trainer"]["env"]
    assert len(deleted) == 1  # cleaned up after success
    # the outputs came back into the task's workspace: the same model as training in this process
    assert result.stage == "finetune" and (ws / "finetune" / "model.pt").is_file()
    local = replace(cfg, base=replace(cfg.base, artifacts_dir=str(tmp_path / "local"), state_uri=""))
    for stage in (ingest, pretrain, finetune):
        stage.run(local)
    a = torch.load(ws / "finetune" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "local" / "finetune" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert staging_uri(cfg, "finetune") == "s3://state/kfp/run-42/finetune/staging"


def test_a_failed_trainjob_fails_the_task_with_its_reason(tiny_cfg, tmp_path, s3, monkeypatch):
    from kubernetes import client

    cfg, ws = _prepared(tiny_cfg, tmp_path, s3, monkeypatch)
    with KubeServer() as server:
        api = client.ApiClient(client.Configuration(host=server.url))
        _job_runner(server.fake, cfg, {"fail": True})
        with pytest.raises(TrainingError) as e:
            run("finetune", cfg, ws, Launch(trainjob=SETTINGS), api_client=api)
    assert "failed: PodFailurePolicy: OOMKilled" in str(e.value) and "\n" not in str(e.value)
    assert not (ws / "finetune").exists()
