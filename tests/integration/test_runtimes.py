"""One pipeline, three runtimes: ``run --direct``, ``dvc repro`` and ``pipeline run-local`` (kfp.local) execute
the stages of the declared graph and give the same metrics, with the ranking applied and a schedule that asks
the registry (``rank.apply: true``, ``schedule.retrain_when: data_changed``).

The three runs are made once (a module fixture, ~2 CPU-minutes); the tests below read what they left: the
stages and their order, the metrics, DVC as a new user drives it (the README's commands, ``.venv/bin/dvc``
from a shell without the venv activated), and what the kfp.local run registered.
"""

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import dvc_repo, tiny_dict
from transferops.stages import graph

pytest.importorskip("kfp")

SETTINGS = ["rank.candidates=[smallcnn]", "rank.apply=true", "schedule.retrain_when=data_changed"]
COMPARED = ("accuracy", "source_only_accuracy", "from_scratch_accuracy", "transfer_gain", "macro_f1", "ece")


def sh(*cmd: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


def ran_stages(dvc_stdout: str) -> list[str]:
    return [line.split("'")[1] for line in dvc_stdout.splitlines() if line.startswith("Running stage '")]


def stage_runs(uri: str) -> list[str]:
    """The stages that opened an MLflow run, in the order they started."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["transferops"], output_format="list")
    staged = sorted((r for r in runs if "transferops.stage" in r.data.tags), key=lambda r: r.info.start_time)
    return [r.data.tags["transferops.stage"] for r in staged]


def params_for(root: Path, uri: str) -> dict:
    from transferops.config import apply_overrides

    data = apply_overrides(tiny_dict(root), SETTINGS)
    data["mlflow"]["tracking_uri"] = uri
    return data


def in_graph_order(ran: list[str]) -> bool:
    """Every stage ran after the stages whose outputs it reads."""
    made_by = graph.producers()
    return all(
        ran.index(made_by[a]) < ran.index(s.name) for s in graph.GRAPH for a in s.all_inputs if made_by[a] in ran
    )


@dataclass
class Runs:
    direct: Path
    direct_uri: str
    repo: Path
    env: dict
    dvc_uri: str
    dvc_stdout: str
    kfp_run: Path
    kfp_uri: str


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    from pipelines.transfer_pipeline import run_local
    from transferops.cli import main

    tmp = tmp_path_factory.mktemp("runtimes")
    saved_cwd, saved_uri = os.getcwd(), os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(tmp)
    try:
        direct = tmp / "direct"
        direct.mkdir()
        direct_uri = f"sqlite:///{direct / 'mlflow.db'}"
        (direct / "params.yaml").write_text(yaml.safe_dump(params_for(direct, direct_uri), sort_keys=False))
        assert main(["run", "--direct", "--params", str(direct / "params.yaml")]) == 0

        dvc_uri = f"sqlite:///{tmp / 'dvc-mlflow.db'}"
        (tmp / "dvc").mkdir()
        repo, env = dvc_repo(tmp / "dvc", dvc_uri)
        data = params_for(repo, dvc_uri)
        data["base"]["artifacts_dir"] = "artifacts"
        (repo / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        out = sh(str(repo / ".venv" / "bin" / "dvc"), "repro", cwd=repo, env=env).stdout

        kfp_uri = f"sqlite:///{tmp / 'kfp-mlflow.db'}"
        os.environ["MLFLOW_TRACKING_URI"] = kfp_uri  # the tasks' processes read it (params say "")
        (tmp / "kfp-params.yaml").write_text(yaml.safe_dump(params_for(tmp / "kfp", ""), sort_keys=False))
        run_local(tmp / "kfp-params.yaml", tmp / "root")
        (kfp_run,) = [p for p in (tmp / "root").iterdir() if p.is_dir()]
    finally:
        os.chdir(saved_cwd)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        if saved_uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved_uri
    return Runs(direct, direct_uri, repo, env, dvc_uri, out, kfp_run, kfp_uri)


def test_the_three_runtimes_run_the_declared_stages_and_agree_on_the_metrics(runs):
    # with candidates and a schedule that asks the registry, every stage opens an MLflow run
    assert stage_runs(runs.direct_uri) == list(graph.NAMES)
    assert json.loads((runs.direct / "artifacts" / "rank" / "choice.json").read_text())["winner"] == "smallcnn"
    dvc_order = ran_stages(runs.dvc_stdout)
    assert sorted(dvc_order) == sorted(graph.NAMES) and in_graph_order(dvc_order)
    assert stage_runs(runs.dvc_uri) == dvc_order
    kfp_order = stage_runs(runs.kfp_uri)  # kfp.local runs a topological order of the same DAG
    assert sorted(kfp_order) == sorted(graph.NAMES) and in_graph_order(kfp_order)

    direct = json.loads((runs.direct / "artifacts" / "evaluate" / "metrics.json").read_text())
    dvc = json.loads((runs.repo / "artifacts" / "evaluate" / "metrics.json").read_text())
    kfp = json.loads((runs.kfp_run / "evaluate" / "metrics").read_text())
    assert direct["from_scratch_accuracy"] is not None
    for key in COMPARED:
        assert direct[key] == dvc[key] == kfp[key], key


def test_every_file_a_dvc_stage_writes_is_declared_in_the_graph(runs):
    """What a stage writes but the graph does not declare is neither cached nor ignored by DVC: a new user's
    ``git status`` shows it, and ``dvc repro`` cannot restore it. ``run.json`` (run id, seconds) is git-ignored
    on purpose; register is not a cached stage."""
    declared = [f.path for s in graph.GRAPH for f in s.files]
    root = runs.direct / "artifacts"
    written = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    undeclared = [
        f
        for f in written
        if not any(f == d or f.startswith(d + "/") for d in declared)
        and not f.endswith("/run.json")
        and not f.startswith("register/")
    ]
    assert undeclared == []
    assert any(f.startswith("evaluate/review/saliency_") for f in written)


def test_the_kfp_local_run_registers_the_champion_it_evaluated(runs):
    import mlflow

    run = runs.kfp_run
    manifest = json.loads((run / "ingest" / "target_data" / "manifest.json").read_text())
    assert manifest["splits"]["labeled"]["count"] == 20  # 2 labels per class, from the tiny params
    metrics = json.loads((run / "evaluate" / "metrics").read_text())
    assert metrics["transfer_gain"] == pytest.approx(metrics["accuracy"] - metrics["from_scratch_accuracy"])
    assert '<img src="data:image/png;base64,' in (run / "evaluate" / "report").read_text()
    reg = json.loads((run / "register" / "registration" / "registration.json").read_text())
    assert reg["promoted"] is True and reg["version"] == "1"
    mlflow.set_tracking_uri(runs.kfp_uri)
    mv = mlflow.MlflowClient().get_model_version_by_alias("transferops-digits", "champion")
    assert float(mv.tags["transferops.accuracy"]) == pytest.approx(metrics["accuracy"], abs=1e-6)


def test_dvc_obeys_the_schedule_then_runs_experiments_and_keeps_the_baseline_of_another_method(runs):
    """Runs in order on the one DVC repo of the fixture (it changes the repo: keep it the last test here)."""
    import mlflow

    repo, env = runs.repo, runs.env
    dvc = str(repo / ".venv" / "bin" / "dvc")
    assert json.loads((repo / "artifacts" / "register" / "registration.json").read_text())["version"] == "1"
    model = (repo / "artifacts" / "finetune" / "model.pt").read_bytes()

    # the same data again: the schedule says no retraining and the stages after it keep their outputs
    t0 = time.perf_counter()
    again = sh(dvc, "repro", cwd=repo, env=env)
    assert "Running stage 'ingest'" not in again.stdout and "Running stage 'schedule'" in again.stdout
    assert "finetune: kept the previous outputs (no retraining: target data unchanged" in again.stderr
    assert (repo / "artifacts" / "finetune" / "model.pt").read_bytes() == model
    assert json.loads((repo / "artifacts" / "schedule" / "gate.json").read_text()) == {"retrain": False}
    assert time.perf_counter() - t0 < 120
    mlflow.set_tracking_uri(runs.dvc_uri)
    assert len(mlflow.MlflowClient().search_model_versions("name = 'transferops-digits'")) == 1

    # what differs between clones and runs is not a change: bytecode (it carries the source's mtime) and a
    # stage's run.json (run id, seconds) inside a folder output
    (repo / "src" / "transferops" / "__pycache__").mkdir(exist_ok=True)
    (repo / "src" / "transferops" / "__pycache__" / "x.cpython-311.pyc").write_bytes(os.urandom(64))
    (repo / "artifacts" / "baseline" / "run.json").write_text('{"seconds": 1.0}')
    status = json.loads(sh(dvc, "status", "--json", cwd=repo, env=env).stdout)
    assert set(status) <= {"schedule", "register"}, status  # the always-changed ones

    # metrics and plots are committed to git (not ignored), so experiments can be compared with main
    sh("git", "add", "-A", cwd=repo, env=env)
    sh("git", "commit", "-qm", "tiny", cwd=repo, env=env)
    assert sh("git", "status", "--porcelain", cwd=repo, env=env).stdout == ""
    tracked = sh("git", "ls-files", "artifacts", cwd=repo, env=env).stdout.split()
    assert "artifacts/evaluate/metrics.json" in tracked and not any(
        f.endswith(("model.pt", "run.json")) for f in tracked
    )

    # another method changes finetune and what follows it, not the from-scratch baseline
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["finetune"]["method"] = "mcc"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(sh(dvc, "status", "--json", cwd=repo, env=env).stdout)
    assert "finetune" in status and "baseline" not in status and "pretrain" not in status
    sh("git", "checkout", "params.yaml", cwd=repo, env=env)

    exp = sh(dvc, "exp", "run", "-S", "schedule.retrain_when=always", "-S", "finetune.epochs=1", cwd=repo, env=env)
    assert {"finetune", "baseline", "evaluate", "register"} <= set(ran_stages(exp.stdout))
    table = json.loads(sh(dvc, "exp", "show", "--json", cwd=repo, env=env).stdout)
    rows = [t for t in table if t["rev"] != "workspace"]  # the committed baseline, then its experiments
    rows += [r for t in rows for e in (t.get("experiments") or []) for r in e["revs"]]
    accuracies = [r["data"]["metrics"]["artifacts/evaluate/metrics.json"]["data"]["accuracy"] for r in rows]
    assert len(accuracies) == 2 and accuracies[0] != accuracies[1]  # main and the 1-epoch experiment

    # every DVC execution is one MLflow parent run (named after what ran) with its stages nested under it
    runs_ = mlflow.search_runs(experiment_names=["transferops"], output_format="list")
    parents = [r for r in runs_ if r.data.tags.get("transferops.kind") == "pipeline"]
    assert len(parents) == 3 and all(p.info.status == "FINISHED" for p in parents)
    assert {p.info.run_name for p in parents} == {"full_finetune-k2-seed0"}
    first = min(parents, key=lambda p: p.info.start_time)
    assert {"accuracy", "transfer_gain", "promoted"} <= set(first.data.metrics)
    assert {i.dataset.name for i in first.inputs.dataset_inputs} == {"source-synthetic_digits", "target-sklearn_digits"}
