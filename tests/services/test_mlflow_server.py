"""The pipeline against a real MLflow server whose artifacts live in S3, and the registry workflow, on both
backend stores (sqlite, PostgreSQL); concurrent registrations and alias moves, which only PostgreSQL really
runs in parallel."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import tiny_dict
from tests.services import together
from tests.services.conftest import ARTIFACTS_BUCKET, client_env
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


def test_pipeline_registry_workflow_against_server_and_s3(tiny_params, tmp_path, mlflow_server, s3, candidates):
    import mlflow
    import mlflow.pytorch

    _, s3_client = s3
    text = tiny_params.read_text().replace(f"tracking_uri: sqlite:///{tmp_path / 'mlflow.db'}", "tracking_uri: ''")
    tiny_params.write_text(text)
    env = client_env(mlflow_server.url)
    p = ["--params", str(tiny_params)]
    cli("run", "--direct", *p, cwd=tmp_path, env=env)
    cfg = load_config(tiny_params)
    paths = Paths.from_config(cfg)
    metrics = json.loads((paths.stage("evaluate") / "metrics.json").read_text())
    reg1 = _reg(paths)
    assert reg1["version"] == "1" and reg1["promoted"] and reg1["tracking_uri"] == mlflow_server.url

    mlflow.set_tracking_uri(mlflow_server.url)
    client = mlflow.MlflowClient()
    # runs, nested runs, metrics and plots through the REST API
    runs = mlflow.search_runs(experiment_names=["transferops"], output_format="list")
    parent = next(r for r in runs if r.data.tags.get("transferops.kind") == "pipeline")
    stages = {
        r.data.tags["transferops.stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert set(stages) == {"ingest", "pretrain", "finetune", "baseline", "evaluate", "register"}
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
        for page in s3_client.get_paginator("list_objects_v2").paginate(
            Bucket=ARTIFACTS_BUCKET, Prefix=f"{mlflow_server.artifacts_prefix}/"
        )
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

    # a better candidate (longer fine-tuning of the same source model, trained once for all tests) is promoted
    # (retried registrations: see the concurrency test)
    better = ["--params", str(candidates["c4"]), "--set", f"register.model_name={model_name(cfg)}"]
    better_paths = Paths.from_config(load_config(candidates["c4"]))
    cli("register", *better, cwd=tmp_path, env=env)
    reg2 = _reg(better_paths)
    assert reg2["version"] == "2" and reg2["promoted"], reg2
    assert reg2["champion_accuracy"] == metrics["accuracy"]  # v1 re-scored through the server, not trusted
    # a candidate that does not clear the champion + min_delta is not promoted; champion untouched
    cli("register", *better, "--set", "register.min_delta=0.5", cwd=tmp_path, env=env)
    reg3 = _reg(better_paths)
    assert reg3["version"] == "3" and not reg3["promoted"] and reg3["aliases"] == ["challenger"]
    assert str(client.get_model_version_by_alias(model_name(cfg), "champion").version) == "2"
    # rollback restores the previous champion; history lists every champion move
    cli("registry", "rollback", *p, cwd=tmp_path, env=env)
    assert str(client.get_model_version_by_alias(model_name(cfg), "champion").version) == "1"
    history = cli("registry", "history", *p, cwd=tmp_path, env=env).stdout
    champion_moves = [line for line in history.splitlines()[1:] if line.split()[1] == "champion"]
    assert len(champion_moves) == 3
    assert "rollback" in champion_moves[-1] and "2 -> 1" in champion_moves[-1]


def _png(path: Path) -> Path:
    from PIL import Image, ImageDraw

    img = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(img).line([(14, 4), (14, 24)], fill=255, width=3)
    img.save(path)
    return path


# ------------------------------------------------------------------------------------------- concurrency
BUDGETS = {  # fine-tuning (epochs, steps per epoch): the incumbent champion, then the challengers
    "incumbent": (1, 1),
    "c1": (1, 3),
    "c2": (2, 4),
    "c3": (4, 6),
    "c4": (6, 10),
}


@pytest.fixture(scope="session")
def candidates(tmp_path_factory) -> dict[str, Path]:
    """Params files of five trained models of one task, ready to register: one ingest + pretrain, shared,
    then fine-tuning with the budgets above. Trained once for every store."""
    from transferops.config import apply_overrides
    from transferops.stages import evaluate, finetune, ingest, pretrain

    root = tmp_path_factory.mktemp("candidates")
    common = [
        "mlflow.tracking_uri=''",
        "register.model_name=concurrent-digits",
        "register.min_accuracy=0.0",
        "register.min_delta=0.0",
        "evaluate.from_scratch_baseline=false",
    ]

    def params(name: str, sets: list[str]) -> Path:
        path = root / f"{name}.yaml"
        data = apply_overrides(tiny_dict(root), [*common, *sets, f"base.artifacts_dir={root / name}"])
        path.write_text(yaml.safe_dump(data))
        return path

    shared = load_config(params("shared", []))
    ingest.run(shared)
    pretrain.run(shared)
    files = {}
    for name, (epochs, steps) in BUDGETS.items():
        files[name] = params(name, [f"finetune.epochs={epochs}", f"finetune.steps_per_epoch={steps}"])
        for stage in ("ingest", "pretrain"):
            shutil.copytree(root / "shared" / stage, root / name / stage)
        cfg = load_config(files[name])
        finetune.run(cfg)
        evaluate.run(cfg)
    return files


def _accuracy(version) -> float:
    return float(version.tags["transferops.accuracy"])


WRITERS = {"sqlite": 2, "postgresql": 4}
"""Concurrent registrations per store: sqlite serialises writers anyway (and kept today's two); PostgreSQL runs
them in parallel."""


def test_concurrent_registrations_against_one_champion(candidates, mlflow_server, tmp_path):
    """Pipelines (four on PostgreSQL) register and gate at the same instant against one champion, then are all
    retried at once: every version exists once, every decision is recorded, the champion ends on the best."""
    import mlflow

    from transferops.registry.aliases import history

    env = client_env(mlflow_server.url)
    names = [n for n in candidates if n != "incumbent"][-WRITERS[mlflow_server.store] :]
    expected = [str(v) for v in range(1, len(names) + 2)]  # the incumbent is v1
    argv = {n: ["register", "--params", str(candidates[n])] for n in ["incumbent", *names]}
    # all processes start (and import) together; the incumbent registers first and becomes champion
    first = together.start(tmp_path / "first", ["incumbent"], 1, argv, env, tmp_path)
    procs = together.start(tmp_path / "barrier", names, 2, argv, env, tmp_path)  # round 0 register, 1 retry
    together.release(tmp_path / "first", ["incumbent"], 0, first)
    together.wait_done(tmp_path / "first", ["incumbent"], 0, first)
    together.release(tmp_path / "barrier", names, 0, procs)
    t0 = time.monotonic()
    together.wait_done(tmp_path / "barrier", names, 0, procs)
    seconds = time.monotonic() - t0
    regs = {n: _reg(Paths.from_config(load_config(candidates[n]))) for n in names}
    together.release(tmp_path / "barrier", names, 1, procs)
    for proc in first + procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    print(f"\n{len(names)} concurrent registrations on {mlflow_server.store}: {seconds:.1f} s")

    # every version exists, once: the retries returned the versions already registered
    assert sorted(r["version"] for r in regs.values()) == expected[1:]
    retried = {n: _reg(Paths.from_config(load_config(candidates[n])))["version"] for n in names}
    assert retried == {n: r["version"] for n, r in regs.items()}
    client = mlflow.MlflowClient(mlflow_server.url)
    versions = {v.version: v for v in client.search_model_versions("name = 'concurrent-digits'")}
    assert sorted(versions) == expected
    # every decision recorded on its version, as registration.json gave it
    for r in regs.values():
        tags = versions[r["version"]].tags
        assert tags["transferops.gate_reason"] == r["reason"]
        assert tags["transferops.promoted"] == str(r["promoted"]).lower()
        assert r["previous_champion_version"] is not None  # each gated against a champion (v1 or a peer)
    # the champion ends on the best model (min_delta 0: the best clears any champion it was gated against)
    champion = client.get_model_version_by_alias("concurrent-digits", "champion")
    print({v: (round(_accuracy(m), 4), m.tags["transferops.promoted"]) for v, m in versions.items()}, champion.version)
    assert _accuracy(champion) == max(_accuracy(v) for v in versions.values())
    assert champion.version == "1" or versions[champion.version].tags["transferops.promoted"] == "true"
    # the history has every move, and each alias is where its last event says
    events = history(client, "concurrent-digits")
    assert {e["to_version"] for e in events if e["alias"] == "challenger"} == set(expected)
    promoted = {r["version"] for r in regs.values() if r["promoted"]}
    assert promoted <= {e["to_version"] for e in events if e["alias"] == "champion"}
    aliases = client.get_registered_model("concurrent-digits").aliases
    for alias in ("champion", "challenger"):
        assert str(aliases[alias]) == [e for e in events if e["alias"] == alias][-1]["to_version"]


def test_two_processes_move_the_same_alias_at_the_same_instant(mlflow_server, tmp_path):
    """Two operators (or pipelines) move ``champion`` at the same moment, six times over, the first time
    creating it: both moves of each round are in the history and the alias is where its last event says."""
    import mlflow

    from transferops.registry.aliases import history

    client = mlflow.MlflowClient(mlflow_server.url)
    name = "alias-race"
    client.create_registered_model(name)
    run = client.create_run(client.create_experiment(name))
    for _ in range(2):
        client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    params = tmp_path / "params.yaml"
    data = tiny_dict(tmp_path)
    data["mlflow"]["tracking_uri"] = ""
    params.write_text(yaml.safe_dump(data))
    movers = {"a": "1", "b": "2"}
    argv = {
        m: ["registry", "promote", name, v, "--reason", f"by {m}", "--params", str(params)] for m, v in movers.items()
    }
    barrier, rounds = tmp_path / "barrier", 6
    procs = together.start(barrier, list(movers), rounds, argv, client_env(mlflow_server.url), tmp_path)
    for round_ in range(rounds):
        together.release(barrier, list(movers), round_, procs)
        together.wait_done(barrier, list(movers), round_, procs)
        events = [e for e in history(client, name) if e["alias"] == "champion"]
        assert len(events) == 2 * (round_ + 1), events  # no move lost, none failed
        assert sorted(e["reason"] for e in events[-2:]) == ["by a", "by b"]
        alias = client.get_registered_model(name).aliases["champion"]
        assert str(alias) == events[-1]["to_version"], (round_, alias, events[-2:])
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]


def test_register_straight_to_postgresql_keeps_its_password_out_of_logs(candidates, postgres, tmp_path):
    """MLFLOW_TRACKING_URI=postgresql+psycopg://user:password@host:port/db, no server: the password appears in no
    output, not in registration.json, not in the MLflow run."""
    import mlflow

    uri = postgres.create_database("direct")
    assert uri.startswith("postgresql+psycopg://transferops:") and postgres.password in uri
    env = client_env(uri)
    params = ["--params", str(candidates["c1"])]
    out = cli("register", *params, "-v", cwd=tmp_path, env=env)
    reg = _reg(Paths.from_config(load_config(candidates["c1"])))
    assert reg["tracking_uri"] == uri.replace(postgres.password, "***") and reg["promoted"]
    printed = out.stdout + out.stderr
    assert "DEBUG" in printed and postgres.password not in printed
    run = mlflow.MlflowClient(uri).get_run(reg["run_id"])
    assert postgres.password not in json.dumps({**run.data.params, **run.data.tags})
