"""The glue between Kubeflow artifacts and the stages, so each component stays a few lines.

A stage reads and writes a fixed layout under ``base.artifacts_dir`` (``ingest/source``, ``pretrain``, ...).
In Kubeflow every input and output artifact has its own path instead. :func:`run_stage_in_workspace` builds a
temporary workspace in that layout with links to the input artifacts, runs the stage there, and copies the
stage's outputs to the output artifact paths.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from transferops.config import Config, config_from_dict
from transferops.errors import ConfigError
from transferops.paths import Paths
from transferops.stages.common import StageResult, read_json


def component_config(params_json: str, seed: int, method: str, labels_per_class: int, overrides: list[str]) -> Config:
    """The Config of one pipeline run: the params compiled into the pipeline (JSON) plus its named run-time
    parameters and ``overrides``; ``labels_per_class`` -1 means null (all). A ``kfp.*`` override is refused
    here: node pools, retries and caching are compiled into the pipeline and cannot change at run time."""
    if overrides:  # a sweep's point (or run-time overrides): its stage runs form a pipeline run of their own
        os.environ["TRANSFEROPS_SWEEP_POINT"] = ", ".join(overrides)
    k = "null" if labels_per_class < 0 else labels_per_class
    named = [
        f"base.seed={seed}",
        f"finetune.method={method}",
        f"ingest.target.split.labels_per_class={k}",
    ]
    return config_from_dict(json.loads(params_json or "{}"), named + list(overrides))


def run_stage_in_workspace(
    stage: str, cfg: Config, inputs: dict[str, str], outputs: dict[str, str], launch: str = ""
) -> tuple[StageResult, Path]:
    """Run ``stage`` with input artifacts linked into a workspace; copy its outputs to the output paths.

    ``launch`` (JSON, compiled into the pipeline) says how a training stage runs: in this process, under
    torchrun on the pod's GPUs, or as a Kubeflow Trainer job (:mod:`transferops.kubeflow.launch`). Returns the
    result and the workspace (valid until the process exits), for reading reports.
    """
    from transferops.kubeflow.launch import Launch, run

    ws = Path(tempfile.mkdtemp(prefix=f"transferops-{stage}-"))
    layout = Paths(ws)
    for name, path in inputs.items():
        link = layout.artifact(name)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(path).resolve(), target_is_directory=True)
    result = run(stage, cfg, ws, Launch.from_json(launch))
    for name, path in outputs.items():
        dest = Path(path)
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(layout.artifact(name), dest)
    return result, ws


def source_data_input(cfg: Config, path: str | None) -> dict[str, str]:
    """The finetune task's ``source_data`` input: absent for a source-free method; for any other method its
    absence is a one-line error naming the method (the DAG was compiled for a source-free one)."""
    from transferops.transfer.choice import uses_source_data

    if not uses_source_data(cfg):
        return {}
    if not path:
        raise ConfigError(
            f"finetune.method: {cfg.finetune.method} trains on the source data, but this pipeline's finetune task "
            "has no source_data input (it was compiled for a source-free method): recompile with this method"
        )
    return {"source_data": path}


def training_metrics(result: StageResult, output_dir: str) -> dict[str, Any]:
    """A training stage's metrics plus what its ``run.json`` says about this run (seconds, resumed step)."""
    run = read_json(Path(output_dir) / "run.json") if (Path(output_dir) / "run.json").is_file() else {}
    return {**result.metrics, **{k: run[k] for k in ("seconds", "resumed_from_step") if k in run}}


def evaluation_report_html(evaluate_dir: Path) -> str:
    """A self-contained HTML page (metrics table and the two plots inline) for the KFP UI."""
    m = read_json(evaluate_dir / "metrics.json")

    def img(name: str) -> str:
        data = base64.b64encode((evaluate_dir / name).read_bytes()).decode()
        return f'<img src="data:image/png;base64,{data}" style="max-width:45%">'

    rows = "".join(
        f"<tr><td>{k}</td><td>{'n/a' if v is None else (f'{v:.4f}' if isinstance(v, float) else v)}</td></tr>"
        for k, v in m.items()
        if not isinstance(v, dict)
    )
    return (
        "<html><body><h2>transferops evaluation (target test split)</h2>"
        f"<table border=1 cellpadding=4>{rows}</table><p>{img('confusion_matrix.png')}{img('reliability.png')}</p>"
        "</body></html>"
    )


def confusion(evaluate_dir: Path) -> tuple[list[str], list[list[int]]]:
    """(classes, matrix rows) as the evaluate stage wrote them (for a KFP ClassificationMetrics artifact)."""
    data = read_json(evaluate_dir / "confusion_matrix.json")
    return data["classes"], data["matrix"]


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a metrics dict (what a KFP Metrics artifact can show)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def record_metrics(artifact, metrics: dict[str, Any]) -> None:
    """Fill a KFP Metrics artifact: each number for the UI, and the whole dict as a file at its path (a
    Metrics artifact with no file counts as missing for the local cache)."""
    for key, value in scalar_metrics(metrics).items():
        artifact.log_metric(key, value)
    Path(artifact.path).write_text(json.dumps(metrics, default=str))
