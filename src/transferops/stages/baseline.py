"""The from-scratch baseline: the architecture pretrain builds, trained on the labelled target images only.

Transfer has to beat it: ``evaluate`` scores it on the target test split as ``from_scratch_accuracy`` and
reports ``transfer_gain`` against it. It is a stage of its own, not part of evaluate, so that it is trained
once per target, architecture, budget and seed: changing ``finetune.method`` (or sweeping it) leaves it as it
is. It trains for finetune's budget (epochs, steps, batch, schedule) the way pretrain trains a model from random
weights: pretrain's learning rate, optimiser, weight decay, label smoothing and augmentation
(:data:`~transferops.stages.graph.BASELINE_BUDGET`), since no weights are being preserved and a weak baseline
would flatter every transfer method. It keeps the epoch with the best target val accuracy.

Outputs (``artifacts/baseline``): ``model.pt``, ``metrics.json``, ``history.json``, ``result.json``; with no
labelled target image (k = 0) or ``evaluate.from_scratch_baseline: false``, only ``result.json`` saying why.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from transferops.config import Config
from transferops.data.shards import read_manifest
from transferops.lineage import lineage
from transferops.models import model_from_config
from transferops.paths import Paths
from transferops.stages.common import StageResult, staged_output, start_stage, write_json, write_trained_model
from transferops.stages.finetune import fit_on_target
from transferops.stages.graph import BASELINE_FROM_PRETRAIN
from transferops.stages.rank import applied_model
from transferops.tracking import NullTracker
from transferops.transfer import Strategy

log = logging.getLogger(__name__)


def run(cfg: Config, tracker: NullTracker | None = None) -> StageResult:
    """Train the from-scratch baseline (or record why there is none)."""
    tracker = tracker or NullTracker()
    start_stage(cfg)
    paths = Paths.from_config(cfg)
    manifest = read_manifest(paths.target_data)
    skipped = _why_not(cfg, manifest)
    if skipped:
        log.info("baseline: none (%s)", skipped)
        with staged_output(paths.artifact("baseline_model")) as out:
            result = StageResult("baseline", metrics={"trained": False, "reason": skipped})
            write_json(out / "result.json", result.to_file())
        return result
    arch = applied_model(cfg)  # what pretrain builds (the ranking's winner with rank.apply), fresh weights
    model = model_from_config(replace(arch, weights="none"), len(manifest["classes"]), manifest["image_shape"][0])
    learning = {key: getattr(cfg.pretrain, key) for key in BASELINE_FROM_PRETRAIN}
    budget = replace(cfg.finetune, **learning, select="val")
    lin = lineage(cfg, target_version=manifest["version"], architecture=arch.name, seed=cfg.base.seed)
    with tracker.stage_run("baseline", cfg, {"transferops.target_version": manifest["version"]}):
        fit = fit_on_target(
            cfg,
            model,
            Strategy(label_smoothing=budget.label_smoothing),
            budget,
            same_classes=True,
            log_metrics=tracker.log_metrics,
            desc="baseline",
            class_balance=cfg.finetune.class_balance,
        )
        metrics = {
            "trained": True,
            "from_scratch_val_accuracy": fit.selected_val_accuracy(True),
            "best_epoch": fit.best_epoch,
            "steps": fit.steps,
        }
        result = write_trained_model(
            "baseline", cfg, model.eval(), manifest["classes"], manifest["image_shape"], fit, metrics, lin, tracker
        )
    log.info("baseline done in %.1fs: target val accuracy %s", fit.seconds, metrics["from_scratch_val_accuracy"])
    return result


def _why_not(cfg: Config, manifest: dict) -> str:
    if not cfg.evaluate.from_scratch_baseline:
        return "evaluate.from_scratch_baseline is off"
    if manifest["splits"]["labeled"]["count"] == 0:
        return "the target has no labelled training images (k = 0)"
    return ""
