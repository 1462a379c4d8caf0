"""Sweeps on existing engines: DVC's experiment queue locally, a ParallelFor on Kubeflow, Katib for search.

``transferops sweep --grid finetune.method=dann,mcc finetune.lr=1e-3,3e-4`` expands the grid into points (here
4) and runs them on an engine:

- ``dvc`` (default): ``dvc exp run --queue -S ...`` per point, then ``dvc queue start -j N`` (DVC's own queue
  and workers); when the queue is empty the experiments' metrics are read back with ``dvc exp show``;
- ``kfp-local`` / ``kubeflow``: the sweep pipeline (:func:`pipelines.transfer_pipeline.build_sweep_pipeline`):
  one ingest and pretrain, then a ``dsl.ParallelFor`` over the points of finetune + evaluate (so the grid
  may only touch ``finetune.*`` and ``evaluate.*``), under kfp.local or submitted to a KFP server;
- ``katib``: a Katib Experiment (grid algorithm over the same values) whose trials run ``transferops trial``
  (ingest, pretrain, finetune) and report ``val_accuracy`` to Katib's File metrics collector.

Every point is one MLflow pipeline run nested under the sweep's parent run, which also gets the sweep's table.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from transferops.config import Config, parse_override
from transferops.errors import ConfigError, TransferopsError

log = logging.getLogger(__name__)

SWEEP_PARENT_ENV = "TRANSFEROPS_SWEEP_PARENT"
"""A sweep's parent run: every pipeline run started under it nests below it."""
SHARED_SECTIONS = ("finetune", "evaluate")
"""What a Kubeflow sweep may vary: its points share one ingest and one pretrain."""


def expand(grid: list[str]) -> list[list[str]]:
    """``["a.b=1,2", "c=x,y"]`` -> the product, each point a list of ``--set`` overrides (values as YAML)."""
    axes = []
    for item in grid:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r}: expected section.key=value1,value2,...")
        key, values = item.split("=", 1)
        options = [v.strip() for v in values.split(",") if v.strip()]
        if not options:
            raise ConfigError(f"--grid {item!r}: no values after '='")
        for v in options:
            parse_override(f"{key}={v}")  # the value must parse as YAML, as --set reads it
        axes.append([f"{key.strip()}={v}" for v in options])
    return [list(point) for point in itertools.product(*axes)]


def point_name(point: list[str]) -> str:
    return ", ".join(point)


# ------------------------------------------------------------------------------------------------ dvc
def run_dvc(cfg: Config, points: list[list[str]], jobs: int, tracker) -> list[dict[str, Any]]:
    """Queue every point as a DVC experiment, run the queue with ``jobs`` workers, wait, return the table."""
    bindir = str(Path(sys.executable).parent)
    dvc = str(Path(bindir) / "dvc") if (Path(bindir) / "dvc").exists() else "dvc"
    env = {
        **os.environ,
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
        SWEEP_PARENT_ENV: tracker.parent_run_id or "",
        "MLFLOW_TRACKING_URI": tracker.uri,  # the experiments run in DVC's temporary workspaces
    }
    names = []
    for i, point in enumerate(points):
        name = f"sweep-{int(time.time())}-{i}"
        args = [a for o in point for a in ("-S", o)]
        _call([dvc, "exp", "run", "--queue", "--name", name, *args], env)
        names.append(name)
    log.info("sweep: %d experiments queued; running them with %d DVC queue worker(s)", len(names), jobs)
    _call([dvc, "queue", "start", "-j", str(jobs)], env)
    _wait_for_queue(dvc, env)
    return _dvc_table(dvc, env, dict(zip(names, points, strict=True)))


def _call(cmd: list[str], env: dict) -> str:
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        raise TransferopsError(f"`{' '.join(cmd[:4])} ...` failed (exit {r.returncode}): {last[0]}")
    return r.stdout


def _wait_for_queue(dvc: str, env: dict, timeout: float = 6 * 3600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = _call([dvc, "queue", "status"], env)
        if not any(s in status for s in ("Queued", "Running")):
            return
        time.sleep(2)
    raise TransferopsError("sweep: the DVC queue did not finish in time")


def _dvc_table(dvc: str, env: dict, points: dict[str, list[str]]) -> list[dict[str, Any]]:
    rows = json.loads(_call([dvc, "exp", "show", "--json"], env))
    found = {}
    for baseline in rows:
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                if rev.get("name") in points:
                    metrics = (rev.get("data") or {}).get("metrics", {})
                    evaluation = metrics.get("artifacts/evaluate/metrics.json", {}).get("data", {})
                    found[rev["name"]] = evaluation
    failed = [n for n in points if n not in found]
    if failed:
        raise TransferopsError(f"sweep: experiments {failed} did not finish (see `dvc queue logs <name>`)")
    return [{"point": point_name(points[n]), "experiment": n, **_headline(found[n])} for n in points]


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("accuracy", "transfer_gain", "source_only_accuracy", "macro_f1", "ece")
    return {k: metrics.get(k) for k in keys}


# ------------------------------------------------------------------------------------------------ kubeflow
def check_shared(points: list[list[str]]) -> None:
    """A Kubeflow sweep shares ingest and pretrain: its grid may only vary finetune.* and evaluate.*."""
    for point in points:
        for o in point:
            section = o.split("=", 1)[0].split(".", 1)[0]
            if section not in SHARED_SECTIONS:
                raise ConfigError(
                    f"--grid {o!r}: a Kubeflow sweep shares one ingest and pretrain, so it varies only "
                    f"{' and '.join(s + '.*' for s in SHARED_SECTIONS)} (use --engine dvc for {section}.*)"
                )


def kfp_local_table(pipeline_root: Path, points: list[list[str]]) -> list[dict[str, Any]]:
    """The sweep table from a kfp.local run's outputs (each ParallelFor iteration's evaluate metrics)."""
    (run,) = sorted((p for p in Path(pipeline_root).iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)[-1:]
    table = []
    for path in sorted(run.rglob("evaluation/metrics.json")):
        metrics = json.loads(path.read_text())
        params = yaml.safe_load((path.parent / "params.resolved.yaml").read_text())
        point = next(
            (p for p in points if all(_value(params, o) for o in p)),
            None,
        )
        table.append({"point": point_name(point) if point else str(path.parent), **_headline(metrics)})
    return sorted(table, key=lambda r: r["point"])


def _value(params: dict, override: str) -> bool:
    keys, value = parse_override(override)
    node: Any = params
    for k in keys:
        node = node.get(k) if isinstance(node, dict) else None
    return node == value


# ------------------------------------------------------------------------------------------------ katib
def katib_manifest(cfg: Config, points: list[list[str]], name: str, image: str, kfp, base: list[str]) -> dict:
    """A Katib Experiment over the grid's values (grid algorithm, one trial per point), ``kfp.sweep_parallelism``
    trials at a time, failing after ``kfp.katib.max_failed_trials`` (capped at the number of trials)."""
    from transferops.kubeflow import katib

    axes: dict[str, list[Any]] = {}
    for point in points:
        for o in point:
            keys, value = parse_override(o)
            axes.setdefault(".".join(keys), [])
            if value not in axes[".".join(keys)]:
                axes[".".join(keys)].append(value)
    space = {k: {"type": "categorical", "values": [str(v) for v in vs]} for k, vs in axes.items()}
    command = [
        "transferops",
        "trial",
        "--params",
        "/opt/transferops/params.yaml",
        *[a for o in base for a in ("--set", o)],
    ]
    gpu, stop = kfp.gpu, kfp.katib.early_stopping
    limits = {"cpu": gpu.cpu_limit, "memory": gpu.memory_limit}
    if gpu.accelerator_type:
        limits[gpu.accelerator_type] = gpu.accelerator_limit
    early = None
    if stop.algorithm:
        early = {"algorithm": stop.algorithm, "min_trials_required": stop.min_trials_required}
        early["start_step"] = stop.start_step
    return katib.experiment_manifest(
        name,
        kfp.namespace,
        image,
        command,
        space,
        algorithm="grid",
        max_trials=len(points),
        parallel_trials=min(len(points), kfp.sweep_parallelism),
        max_failed_trials=min(len(points), kfp.katib.max_failed_trials),
        early_stopping=early,
        resources={"requests": {"cpu": gpu.cpu_request, "memory": gpu.memory_request}, "limits": limits},
        node_selector=dict(gpu.node_selector),
        tolerations=list(gpu.tolerations),
        secret_env=[(s.name, dict(s.env)) for s in kfp.secrets],
        shm_size=gpu.shm_size,
        image_pull_policy=kfp.image_pull_policy,
    )


def trial(cfg: Config) -> float:
    """One Katib trial: the stages finetune needs (:func:`transferops.stages.graph.upstream`), then finetune;
    report the selected target val accuracy to Katib (after every epoch too, for its median stop)."""
    from transferops.kubeflow.katib import ObjectiveReporter, write_trial_metrics
    from transferops.paths import Paths
    from transferops.stages import graph, run_pipeline
    from transferops.stages.common import read_json
    from transferops.tracking import make_tracker

    tracker = make_tracker(cfg)
    reporting = ObjectiveReporter(tracker)  # finetune's val_accuracy is the objective
    run_pipeline(cfg, lambda stage: reporting if stage == "finetune" else tracker, graph.upstream("finetune", cfg))
    value = read_json(Paths.from_config(cfg).stage("finetune") / "metrics.json")["val_accuracy"]
    if value is None:
        raise TransferopsError("trial: no labelled target val split: val_accuracy, the objective, is undefined")
    write_trial_metrics({"val_accuracy": value})
    return value


# ------------------------------------------------------------------------------------------------ report
def markdown(table: list[dict[str, Any]]) -> str:
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f}"

    lines = ["| point | accuracy % | transfer gain (points) | macro-F1 |", "|---|---|---|---|"]
    for r in sorted(table, key=lambda r: -(r.get("accuracy") or 0)):
        f1 = "n/a" if r.get("macro_f1") is None else f"{r['macro_f1']:.3f}"
        lines.append(f"| {r['point']} | {pct(r.get('accuracy'))} | {pct(r.get('transfer_gain'))} | {f1} |")
    return "\n".join(lines) + "\n"
