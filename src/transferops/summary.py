"""The short report printed at the end of a pipeline run, read from the stages' output files.

The registry part is read live (the version's aliases now), so a summary printed after another run moved
``champion`` says so instead of repeating what ``registration.json`` recorded at the time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transferops.config import Config
from transferops.errors import TransferopsError
from transferops.paths import Paths
from transferops.stages.common import read_json
from transferops.tracking.tracker import safe_uri


def _pct(x: float | None) -> str:
    return "   n/a" if x is None else f"{100 * x:5.1f}%"


def _labels(k: Any) -> str:
    return "all labels" if k is None else f"{k} label{'' if k == 1 else 's'} per class"


def _method(m: dict[str, Any]) -> str:
    """The method trained, and what chose it when that was ``recipe`` or ``auto``."""
    by = m.get("method_chosen_by")
    return m["method"] if by in (None, m["method"]) else f"{m['method']}, chosen by {by}"


def _live_aliases(tracking_uri: str, name: str, version: str) -> list[str] | None:
    try:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
        return sorted(mlflow.MlflowClient().get_model_version(name, version).aliases)
    except Exception:  # the registry is not reachable from here: fall back to what was recorded
        return None


def _gate(r: dict[str, Any]) -> str:
    """What this run's registration did: unchanged (the model was already registered), or the gate's decision."""
    reason = r["reason"].split("; WARNING")[0]
    if r.get("unchanged"):
        return f"registration unchanged: this model is already version {r['version']}; nothing registered or moved"
    if r.get("retried"):
        return f"registration unchanged: this model is already version {r['version']} (recorded then: {reason})"
    return f"{'promoted to champion' if r['promoted'] else 'not promoted'}: {reason}"


def summary_text(evaluate_dir: Path, register_dir: Path, outputs: str, tracking_uri: str) -> str:
    """The summary of the run whose evaluate and register outputs are in these folders."""
    try:
        m = read_json(Path(evaluate_dir) / "metrics.json")
        r = read_json(Path(register_dir) / "registration.json")
    except FileNotFoundError as exc:
        raise TransferopsError(f"{exc.filename}: not found (the pipeline has not completed)") from None
    gain = m.get("transfer_gain")
    if r.get("version"):
        aliases = _live_aliases(tracking_uri, r["model_name"], r["version"])
        aliases = r["aliases"] if aliases is None else aliases
        registered = f"{r['model_name']} version {r['version']}, aliases now: {', '.join(aliases) or 'none'}"
    else:
        registered = f"{r['model_name']}: nothing registered"
    ui = (
        f"mlflow ui --backend-store-uri {safe_uri(tracking_uri)}"
        if tracking_uri.startswith("sqlite")
        else safe_uri(tracking_uri)
    )
    return "\n".join(
        [
            "",
            "transferops pipeline summary",
            f"  target test accuracy  {_pct(m['accuracy'])}   ({_method(m)}, {_labels(m['labels_per_class'])}, "
            f"{m['n_test']} test images, macro-F1 {m['macro_f1']:.3f}, ECE {m['ece']:.3f})",
            f"  balanced accuracy     {_pct(m.get('balanced_accuracy'))}   (mean per-class recall)",
            f"  source-only baseline  {_pct(m.get('source_only_accuracy'))}",
            f"  from-scratch baseline {_pct(m.get('from_scratch_accuracy'))}",
            f"  transfer gain         {'   n/a' if gain is None else f'{100 * gain:+5.1f}'} points",
            *([f"  WARNING               {m['negative_transfer']}"] if m.get("negative_transfer") else []),
            f"  registered model      {registered}",
            f"  gate                  {_gate(r)}",
            f"  outputs               {outputs}",
            f"  MLflow UI             {ui}",
            "",
        ]
    )


def print_summary(cfg: Config, tracking_uri: str) -> None:
    paths = Paths.from_config(cfg)
    outputs = f"{paths.root}/ (metrics: {paths.stage('evaluate')}/metrics.json)"
    print(summary_text(paths.stage("evaluate"), paths.stage("register"), outputs, tracking_uri))
