"""DVC as a new user runs it: the README's commands, `.venv/bin/dvc` from a shell without the venv activated,
on the real dvc.yaml and a tiny params.yaml in a throwaway git repo."""

import json
import subprocess
import time
from pathlib import Path

from tests.conftest import dvc_repo


def sh(*cmd: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


def test_dvc_repro_then_noop_then_exp_run_as_printed_with_metrics_and_one_parent_run(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    repo, env = dvc_repo(tmp_path, uri)
    dvc = str(repo / ".venv" / "bin" / "dvc")
    out = sh(dvc, "repro", cwd=repo, env=env).stdout
    for stage in ("ingest", "pretrain", "finetune", "evaluate", "register"):
        assert f"Running stage '{stage}'" in out
    assert json.loads((repo / "artifacts" / "register" / "registration.json").read_text())["version"] == "1"
    assert (repo / "dvc.lock").is_file()

    t0 = time.perf_counter()
    again = sh(dvc, "repro", cwd=repo, env=env).stdout
    # only register runs again (the registry lives outside DVC): it finds its version and registers nothing new
    assert "Running stage 'register'" in again and "Running stage 'finetune'" not in again
    assert time.perf_counter() - t0 < 60

    # metrics and plots are committed to git (not ignored), so experiments can be compared with main
    sh("git", "add", "-A", cwd=repo, env=env)
    sh("git", "commit", "-qm", "tiny", cwd=repo, env=env)
    assert sh("git", "status", "--porcelain", cwd=repo, env=env).stdout == ""
    tracked = sh("git", "ls-files", "artifacts", cwd=repo, env=env).stdout.split()
    assert "artifacts/evaluate/metrics.json" in tracked and not any(
        f.endswith(("model.pt", "run.json")) for f in tracked
    )
    exp = sh(dvc, "exp", "run", "-S", "finetune.epochs=1", cwd=repo, env=env).stdout
    assert "Running stage 'finetune'" in exp and "Running stage 'pretrain'" not in exp
    table = json.loads(sh(dvc, "exp", "show", "--json", cwd=repo, env=env).stdout)
    rows = [t for t in table if t["rev"] != "workspace"]  # the committed baseline, then its experiments
    rows += [r for t in rows for e in (t.get("experiments") or []) for r in e["revs"]]
    accuracies = [r["data"]["metrics"]["artifacts/evaluate/metrics.json"]["data"]["accuracy"] for r in rows]
    assert len(accuracies) == 2 and all(0 < a <= 1 for a in accuracies)  # main and the experiment
    assert "accuracy" in sh(dvc, "exp", "show", "--only-changed", cwd=repo, env=env).stdout

    # every DVC execution is one MLflow parent run (named after what ran) with its stages nested under it
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["transferops"], output_format="list")
    parents = [r for r in runs if r.data.tags.get("transferops.kind") == "pipeline"]
    assert len(parents) == 3 and all(p.info.status == "FINISHED" for p in parents)
    assert {p.info.run_name for p in parents} == {"full_finetune-k2-seed0"}
    for p in parents:
        assert p.data.tags["mlflow.note.content"].startswith("transferops pipeline:")
    by_parent = {p.info.run_id: set() for p in parents}
    for r in runs:
        if r.data.tags.get("mlflow.parentRunId") in by_parent:
            by_parent[r.data.tags["mlflow.parentRunId"]].add(r.data.tags["transferops.stage"])
    assert sorted(map(sorted, by_parent.values())) == [
        ["evaluate", "finetune", "ingest", "pretrain", "register"],  # dvc repro
        ["evaluate", "finetune", "register"],  # dvc exp run -S finetune.epochs=1
        ["register"],  # the second dvc repro
    ]
    first = next(p for p in parents if len(by_parent[p.info.run_id]) == 5)
    assert {"accuracy", "transfer_gain", "promoted"} <= set(first.data.metrics)
    assert {i.dataset.name for i in first.inputs.dataset_inputs} == {"source-synthetic_digits", "target-sklearn_digits"}
