"""Stage 2, pretrain: train the model on the labelled source domain.

Outputs (``artifacts/pretrain``): ``model.pt`` (state dict + resolved config + class names + image geometry +
source dataset version), ``metrics.json``, ``history.json`` (per-epoch metrics for ``dvc plots``),
``result.json`` and ``run.json`` (MLflow run, seconds, throughput).
"""

from __future__ import annotations

import logging
from dataclasses import replace

from transferops.config import Config
from transferops.data.shards import load_split, read_manifest
from transferops.lineage import lineage
from transferops.models import model_from_config
from transferops.paths import Paths
from transferops.stages.common import StageResult, start_stage, state_store, training_setup, write_trained_model
from transferops.stages.rank import applied_model
from transferops.tracking import NullTracker
from transferops.training import distributed
from transferops.training.loop import TrainRun, load_resume_state, train
from transferops.transfer import Strategy

log = logging.getLogger(__name__)


def run(cfg: Config, tracker: NullTracker | None = None, restart: bool = False) -> StageResult:
    """Train ``cfg.model`` on the source ``labeled`` split, selecting on the source ``val`` split."""
    tracker = tracker or NullTracker()
    start_stage(cfg)
    cfg = replace(cfg, model=applied_model(cfg))  # the ranking's winner when rank.apply is on
    paths = Paths.from_config(cfg)
    manifest = read_manifest(paths.source_data)
    labeled, val = load_split(paths.source_data, "labeled"), load_split(paths.source_data, "val")
    dist, device, tracker = training_setup(cfg, tracker)
    model = model_from_config(cfg.model, len(manifest["classes"]), manifest["image_shape"][0])
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "pretrain: %s (%s params) on %d source images, device %s", cfg.model.name, f"{n_params:,}", len(labeled), device
    )
    lin = lineage(cfg, source_version=manifest["version"])
    config_hash = cfg.section_hash("base", "model", "pretrain") + manifest["version"]
    store = state_store(cfg, "pretrain")
    saved = load_resume_state(store, config_hash, restart)
    tags = {"transferops.source_version": manifest["version"]}
    with tracker.stage_run("pretrain", cfg, tags, resume_run_id=saved and saved.get("tracking_run_id")):
        run = TrainRun(
            cfg.base.seed,
            device,
            "pretrain",
            store,
            config_hash,
            tracker.log_metrics,
            run_id=tracker.run_id,
            dist=dist,
        )
        strategy = Strategy(label_smoothing=cfg.pretrain.label_smoothing)
        fit = train(model, strategy, cfg.pretrain, {"labeled": labeled}, val, run, resume_from=saved)
        metrics = {
            "source_val_accuracy": fit.selected_val_accuracy(cfg.pretrain.select_best),
            "best_epoch": fit.best_epoch,
            "steps": fit.steps,
            "parameters": n_params,
        }
        if dist.is_main:
            result = write_trained_model(
                "pretrain", cfg, model, manifest["classes"], manifest["image_shape"], fit, metrics, lin, tracker
            )
    distributed.barrier(dist)
    distributed.cleanup(dist)
    if not dist.is_main:
        return StageResult("pretrain", metrics=metrics, lineage=lin)
    log.info("pretrain done in %.1fs: source val accuracy %s", fit.seconds, metrics["source_val_accuracy"])
    return result
