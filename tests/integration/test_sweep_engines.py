"""4-point sweeps on the real engines (slow: `make test-slow`): DVC's experiment queue in a throwaway repo,
and the Kubeflow sweep pipeline (ParallelFor) under kfp.local; each point one MLflow run under the sweep's."""

import subprocess

import mlflow
import pytest

from tests.conftest import dvc_repo

pytestmark = pytest.mark.slow

GRID = ["finetune.method=full_finetune,l2sp", "finetune.lr=0.001,0.003"]


def _sweep_children(uri: str) -> tuple[object, list]:
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["transferops"], output_format="list")
    (sweep,) = [r for r in runs if r.data.tags.get("transferops.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep.info.run_id]
    return sweep, children


def test_a_four_point_sweep_on_the_dvc_queue(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    repo, env = dvc_repo(tmp_path, uri)
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "tiny"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
    r = subprocess.run(
        [str(repo / ".venv" / "bin" / "python"), "-m", "transferops", "sweep", "--grid", *GRID, "--jobs", "2"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith("| finetune.method=")]
    assert len(rows) == 4
    sweep, children = _sweep_children(uri)
    assert len(children) == 4 and all(c.data.tags.get("transferops.kind") == "pipeline" for c in children)
    assert "best_accuracy" in sweep.data.metrics


def test_a_four_point_sweep_as_a_parallel_for_under_kfp_local(tiny_params, tmp_path, monkeypatch):
    from transferops.cli import main

    uri = f"sqlite:///{tmp_path / 'kfp.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    text = tiny_params.read_text().replace(f"tracking_uri: sqlite:///{tmp_path / 'mlflow.db'}", "tracking_uri: ''")
    tiny_params.write_text(text)
    root = tmp_path / "root"
    assert (
        main(
            [
                "sweep",
                "--engine",
                "kfp-local",
                "--params",
                str(tiny_params),
                "--pipeline-root",
                str(root),
                "--grid",
                *GRID,
            ]
        )
        == 0
    )
    run = next(p for p in root.iterdir() if p.is_dir())
    assert len(list(run.rglob("evaluation/metrics.json"))) == 4  # four evaluations, one ingest and pretrain
    assert len(list(run.rglob("source_model/model.pt"))) == 1
    sweep, children = _sweep_children(uri)
    # one pipeline run per point (its finetune and evaluate), and one for the shared ingest and pretrain
    assert len(children) == 5 and "best_accuracy" in sweep.data.metrics
