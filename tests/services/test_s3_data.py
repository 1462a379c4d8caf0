"""S3 for data: ingest from an s3:// prefix, and a DVC remote on the S3 server (push, pull, repro no-op)."""

import hashlib
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import dvc_repo
from transferops.config import DatasetConfig, IngestConfig
from transferops.data.sources import open_source
from transferops.errors import DataError


def _open(path: str, work: Path):
    return open_source(DatasetConfig(kind="image_folder", path=path), IngestConfig(), 0, work, "ingest.target")


pytestmark = pytest.mark.services


def _tree(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for c in ("ant", "bee", "cat"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (20, 16), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_ingest_from_s3_prefix_equals_ingest_from_disk(s3, tmp_path):
    from transferops.data.shards import stratified_split, write_dataset

    _, client = s3
    root = _tree(tmp_path / "tree")
    client.create_bucket(Bucket="datasets")
    for f in sorted(root.rglob("*.png")):
        client.upload_file(str(f), "datasets", f"team/digits/{f.relative_to(root).as_posix()}")
    manifests = []
    for path in (str(root), "s3://datasets/team/digits"):
        name = "s3" if path.startswith("s3") else "disk"
        src = _open(path, tmp_path / f"work-{name}")
        splits = stratified_split(src.labels, src.classes, DatasetConfig().split, 0)
        manifests.append(write_dataset(tmp_path / name, src, splits, 8, size=16, channels=1)[0])
    assert manifests[0]["classes"] == ["ant", "bee", "cat"]
    assert manifests[0]["version"] == manifests[1]["version"]
    assert manifests[0]["splits"] == manifests[1]["splits"]


def test_s3_errors_name_the_url(s3, tmp_path):
    with pytest.raises(DataError, match=r"s3://no-such-bucket/x: S3 request failed \(NoSuchBucket"):
        _open("s3://no-such-bucket/x", tmp_path / "a")
    _, client = s3
    client.create_bucket(Bucket="empty-bucket")
    with pytest.raises(DataError, match="no objects under this prefix"):
        _open("s3://empty-bucket/nothing", tmp_path / "b")


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow  # a whole dvc repro, push and pull: ~80 s
def test_dvc_push_pull_through_s3_remote(s3, tmp_path):
    url, client = s3
    client.create_bucket(Bucket="dvc-store")
    repo, env = dvc_repo(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")

    def sh(*cmd):
        cmd = (str(repo / ".venv" / "bin" / "dvc"), *cmd[1:]) if cmd[0] == "dvc" else cmd
        r = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{cmd}: {r.stdout[-1500:]}\n{r.stderr[-2500:]}"
        return r.stdout

    # the documented remote set-up; credentials come from the environment only
    sh("dvc", "remote", "add", "-d", "storage", "s3://dvc-store/transferops")
    sh("dvc", "remote", "modify", "storage", "endpointurl", url)
    assert "testing" not in (repo / ".dvc" / "config").read_text()
    sh("dvc", "repro")
    before = _digest(repo / "artifacts" / "ingest")
    sh("dvc", "push")
    assert client.list_objects_v2(Bucket="dvc-store", Prefix="transferops/")["KeyCount"] > 0
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "artifacts" / "ingest")
    (repo / "artifacts" / "pretrain" / "model.pt").unlink()
    sh("dvc", "pull")
    assert _digest(repo / "artifacts" / "ingest") == before
    assert (repo / "artifacts" / "pretrain" / "model.pt").is_file()
    again = sh("dvc", "repro")  # nothing to train again; only register runs (the registry is outside DVC)
    assert "Running stage 'register'" in again
    assert all(f"Stage '{s}' didn't change, skipping" in again for s in ("ingest", "pretrain", "finetune", "evaluate"))


def test_training_state_on_s3_is_saved_atomically_read_back_and_deleted(s3):
    import torch

    from transferops.training.state import open_state_store, state_location

    _, client = s3
    client.create_bucket(Bucket="train-state")
    store = open_state_store(state_location("s3://train-state/runs", "unused", "finetune", run_key="run-1"))
    assert store.load() is None
    store.save({"step": 3, "w": torch.arange(4.0)})
    store.save({"step": 6, "w": torch.arange(4.0) * 2})
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="train-state").get("Contents", [])]
    assert keys == ["runs/run-1/finetune/state.pt"]  # the temporary upload keys are gone
    state = store.load()
    assert state["step"] == 6 and torch.equal(state["w"], torch.arange(4.0) * 2)
    other = open_state_store(state_location("s3://train-state/runs", "unused", "finetune", run_key="run-2"))
    assert other.load() is None  # another run never sees this one's state
    store.delete()
    assert store.load() is None
