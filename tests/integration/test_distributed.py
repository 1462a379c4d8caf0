"""Data parallelism on CPU: `transferops finetune` under torchrun with 2 gloo processes.

With GroupNorm (batch statistics would differ per rank; SyncBatchNorm has no CPU implementation), no dropout
and a loss that is a mean over samples, two processes each holding half of the global batch compute the same
updates as one process with the whole batch: the final weights agree to float rounding (tolerance 1e-4, the
reduction order differs). Losses computed from batch statistics (MCC, MMD, CORAL) see each rank's half, as in
every DDP implementation of them. Killing a
rank mid-epoch and relaunching resumes from rank 0's saved state to bit-identical weights.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import tiny_dict
from transferops.config import config_from_dict
from transferops.stages import finetune, ingest, pretrain
from transferops.training.state import state_location

DDP = [
    "model.norm=group",
    "model.dropout=0.0",
    "pretrain.epochs=8",  # GroupNorm learns more slowly than BatchNorm on the tiny source
    "pretrain.lr=0.003",
    "finetune.batch_size=32",
    "finetune.epochs=3",
    "finetune.steps_per_epoch=8",
    "finetune.checkpoint_every_steps=2",
    "finetune.method=full_finetune",  # a loss that decomposes over samples (MCC, MMD, CORAL use batch statistics)
    "ingest.target.split.labels_per_class=2",
]


def _params(tmp_path: Path, name: str) -> Path:
    from transferops.config import apply_overrides

    data = apply_overrides(tiny_dict(tmp_path), DDP)
    data["base"]["artifacts_dir"] = str(tmp_path / name)
    data["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path / name}.db"
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _torchrun(params: Path, cwd: Path, nproc: int = 2) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd += ["-m", "transferops", "finetune", "--params", str(params)]
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _weights(artifacts: Path) -> dict[str, torch.Tensor]:
    return torch.load(artifacts / "finetune" / "model.pt", weights_only=True)["state_dict"]


@pytest.fixture
def prepared(tmp_path):
    """Ingest and pretrain once; every run below fine-tunes the same source model on the same data."""
    one = _params(tmp_path, "one")
    cfg = config_from_dict(yaml.safe_load(one.read_text()))
    for stage in (ingest, pretrain):
        stage.run(cfg)
    for name in ("two", "killed"):
        _params(tmp_path, name)
        for part in ("ingest", "pretrain"):
            shutil.copytree(tmp_path / "one" / part, tmp_path / name / part)
    return tmp_path, cfg


def test_two_gloo_processes_train_like_one_and_rank0_alone_writes(prepared):
    import mlflow

    tmp_path, cfg = prepared
    pre = torch.load(tmp_path / "one" / "pretrain" / "model.pt", weights_only=True)["state_dict"]
    finetune.run(cfg)  # one process, the whole global batch
    proc = _torchrun(tmp_path / "two.yaml", tmp_path)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    diff = max(float((one[k].float() - two[k].float()).abs().max()) for k in one)
    assert diff < 1e-4, diff
    moved = max(float((one[k].float() - pre[k].float()).abs().max()) for k in one if k in pre)
    assert moved > 100 * max(diff, 1e-7)  # the weights really moved: the agreement is not trivial
    assert out.count("finetune done") == 1  # rank 0 alone reports, writes and tracks
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'two'}.db")
    runs = mlflow.search_runs(experiment_names=["transferops"], output_format="list")
    assert [r.data.tags["transferops.stage"] for r in runs] == ["finetune"]
    history_one = json.loads((tmp_path / "one" / "finetune" / "history.json").read_text())
    history_two = json.loads((tmp_path / "two" / "finetune" / "history.json").read_text())
    assert [h["val_accuracy"] for h in history_one] == [h["val_accuracy"] for h in history_two]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.slow  # three torchrun launches: ~50 s
def test_killing_a_rank_then_relaunching_resumes_to_identical_weights(prepared):
    tmp_path, _ = prepared
    reference = _torchrun(tmp_path / "two.yaml", tmp_path)
    out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, out[-3000:]

    state = Path(state_location("", str(tmp_path / "killed"), "finetune", run_key=""))
    proc = _torchrun(tmp_path / "killed.yaml", tmp_path)
    killed_at, deadline = None, time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if state.is_file():
            try:
                step = torch.load(state, weights_only=True)["step"]
            except Exception:
                step = -1
            if step >= 9:  # mid-epoch 2 (8 steps an epoch), after a step checkpoint
                workers = [c for c in _children(proc.pid)]
                assert len(workers) == 2
                os.kill(workers[-1], signal.SIGKILL)  # one rank dies; torchrun stops the other
                killed_at = step
                break
        time.sleep(0.05)
    proc.communicate(timeout=120)
    assert killed_at is not None and proc.returncode != 0
    assert not (tmp_path / "killed" / "finetune" / "model.pt").exists()
    again = _torchrun(tmp_path / "killed.yaml", tmp_path)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0 and "resumed from" in out, out[-3000:]
    ref, resumed = _weights(tmp_path / "two"), _weights(tmp_path / "killed")
    assert all(torch.equal(ref[k], resumed[k]) for k in ref)
