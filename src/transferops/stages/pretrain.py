"""Stage 2, pretrain: train the model on the labelled source domain.

Outputs (``artifacts/pretrain``): ``model.pt`` (state dict + resolved config + class names + source dataset
version), ``metrics.json``, ``history.json`` (per-epoch metrics for ``dvc plots``) and ``result.json``.
"""

from __future__ import annotations

import logging

from transferops.config import Config
from transferops.data.shards import load_split, read_manifest
from transferops.lineage import lineage
from transferops.models import create_model
from transferops.models.io import save_model
from transferops.paths import Paths
from transferops.stages.common import StageResult, save_resolved_config, staged_output, start_stage, write_json
from transferops.tracking import NullTracker
from transferops.training.loop import train
from transferops.training.seeding import resolve_device
from transferops.transfer import Strategy

log = logging.getLogger(__name__)


def run(cfg: Config, tracker: NullTracker | None = None, restart: bool = False) -> StageResult:
    """Train ``cfg.model`` on the source ``labeled`` split, selecting on the source ``val`` split."""
    tracker = tracker or NullTracker()
    start_stage(cfg)
    paths = Paths.from_config(cfg)
    manifest = read_manifest(paths.source_data)
    labeled, val = load_split(paths.source_data, "labeled"), load_split(paths.source_data, "val")
    device = resolve_device(cfg.base.device)
    model = create_model(
        cfg.model.name,
        len(manifest["classes"]),
        cfg.model.weights,
        cfg.ingest.channels,
        cfg.model.width,
        cfg.model.dropout,
    )
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "pretrain: %s (%s params) on %d source images, device %s", cfg.model.name, f"{n_params:,}", len(labeled), device
    )
    lin = lineage(cfg, source_version=manifest["version"])
    config_hash = cfg.section_hash("base", "model", "pretrain") + manifest["version"]
    with tracker.stage_run("pretrain", cfg, {"transferops.source_version": manifest["version"]}):
        fit = train(
            model,
            Strategy(label_smoothing=cfg.pretrain.label_smoothing),
            cfg.pretrain,
            {"labeled": labeled},
            val,
            cfg.base.seed,
            device,
            paths.state("pretrain"),
            config_hash,
            tracker.log_metrics,
            "pretrain",
            restart,
        )
        metrics = {
            "source_val_accuracy": fit.best_val_accuracy
            if cfg.pretrain.select_best
            else fit.history[-1]["val_accuracy"],
            "best_epoch": fit.best_epoch,
            "steps": fit.steps,
            "seconds": round(fit.seconds, 2),
            "parameters": n_params,
        }
        with staged_output(paths.stage("pretrain")) as out:
            save_model(out / "model.pt", model, cfg, manifest["classes"], lin)
            write_json(out / "metrics.json", metrics)
            write_json(out / "history.json", fit.history)
            save_resolved_config(cfg, out)
            result = StageResult("pretrain", {"model": str(paths.source_model)}, metrics, tracker.run_id, lin)
            write_json(out / "result.json", result.to_dict())
        tracker.log_metrics({k: v for k, v in metrics.items() if k != "best_epoch"})
        tracker.log_artifact(paths.source_model, "checkpoint")
    log.info("pretrain done: source val accuracy %.4f in %.1fs", metrics["source_val_accuracy"], fit.seconds)
    return result
