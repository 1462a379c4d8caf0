"""The short report printed at the end of a pipeline run, read from the stages' output files."""

from __future__ import annotations

from transferops.config import Config
from transferops.errors import TransferopsError
from transferops.paths import Paths
from transferops.stages.common import read_json
from transferops.tracking.tracker import safe_uri


def _pct(x: float | None) -> str:
    return "   n/a" if x is None else f"{100 * x:5.1f}%"


def summary_text(cfg: Config, tracking_uri: str) -> str:
    paths = Paths.from_config(cfg)
    try:
        m = read_json(paths.stage("evaluate") / "metrics.json")
        r = read_json(paths.stage("register") / "registration.json")
    except FileNotFoundError as exc:
        raise TransferopsError(f"{exc.filename}: not found (the pipeline has not completed)") from None
    gain = m.get("transfer_gain")
    registered = (
        f"{r['model_name']} version {r['version']}, aliases: {', '.join(r['aliases']) or 'none'}"
        if r.get("version")
        else f"{r['model_name']}: nothing registered"
    )
    ui = (
        f"mlflow ui --backend-store-uri {safe_uri(tracking_uri)}"
        if tracking_uri.startswith("sqlite")
        else safe_uri(tracking_uri)
    )
    return "\n".join(
        [
            "",
            "transferops pipeline summary",
            f"  target test accuracy  {_pct(m['accuracy'])}   ({m['method']}, {m['labels_per_class']} labels per "
            f"class, {m['n_test']} test images, macro-F1 {m['macro_f1']:.3f}, ECE {m['ece']:.3f})",
            f"  source-only baseline  {_pct(m.get('source_only_accuracy'))}",
            f"  from-scratch baseline {_pct(m.get('from_scratch_accuracy'))}",
            f"  transfer gain         {'   n/a' if gain is None else f'{100 * gain:+5.1f}'} points",
            f"  registered model      {registered}",
            f"  gate                  {'promoted to champion' if r['promoted'] else 'not promoted'}: {r['reason']}",
            f"  outputs               {paths.root}/ (metrics: {paths.stage('evaluate')}/metrics.json)",
            f"  MLflow UI             {ui}",
            "",
        ]
    )


def print_summary(cfg: Config, tracking_uri: str) -> None:
    print(summary_text(cfg, tracking_uri))
