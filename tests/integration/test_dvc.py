"""`dvc repro` of the real dvc.yaml on a tiny params.yaml, in a throwaway git repo."""

import subprocess
import time
from pathlib import Path

from tests.conftest import dvc_repo


def sh(*cmd: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


def test_dvc_repro_runs_all_stages_then_is_a_noop(tmp_path):
    repo, env = dvc_repo(tmp_path, "")
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = sh("dvc", "repro", cwd=repo, env=env).stdout
    for stage in ("ingest", "pretrain", "finetune", "evaluate", "register"):
        assert f"Running stage '{stage}'" in out
    assert (repo / "artifacts" / "register" / "registration.json").is_file()
    assert (repo / "dvc.lock").is_file()

    t0 = time.perf_counter()
    again = sh("dvc", "repro", cwd=repo, env=env).stdout
    assert "Data and pipelines are up to date" in again
    assert time.perf_counter() - t0 < 10  # measured ~0.7 s; a loose bound against re-running a stage

    metrics = sh("dvc", "metrics", "show", "--json", cwd=repo, env=env).stdout
    assert "transfer_gain" in metrics

    # dvc exp run -S re-runs only what depends on the changed section
    sh("git", "add", "-A", cwd=repo, env=env)
    sh("git", "commit", "-qm", "tiny", cwd=repo, env=env)
    exp = sh("dvc", "exp", "run", "-S", "finetune.epochs=1", cwd=repo, env=env).stdout
    assert "Running stage 'finetune'" in exp and "Running stage 'pretrain'" not in exp
