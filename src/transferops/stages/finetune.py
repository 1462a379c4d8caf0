"""Stage 3, finetune: transfer the source model to the target domain with the method ``finetune.method``.

The method is a strategy object from :mod:`transferops.transfer`; this stage only wires data and budget.
Outputs (``artifacts/finetune``): ``model.pt``, ``metrics.json``, ``history.json``, ``result.json``.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch

from transferops.config import Config, TrainConfig
from transferops.data.shards import Split, load_split, read_manifest
from transferops.lineage import file_sha256, lineage
from transferops.models import TransferNet, create_model
from transferops.models.io import load_model
from transferops.paths import Paths
from transferops.stages.common import StageResult, start_stage, write_trained_model
from transferops.tracking import NullTracker
from transferops.training.loop import FitResult, train
from transferops.training.seeding import resolve_device
from transferops.transfer import Strategy, TransferContext, get_strategy

log = logging.getLogger(__name__)


def stream_data(paths: Paths, strategy: Strategy) -> dict[str, Split]:
    """The splits behind each batch stream a strategy asks for (required and optional)."""
    where = {
        "labeled": (paths.target_data, "labeled"),
        "unlabeled": (paths.target_data, "unlabeled"),
        "source": (paths.source_data, "labeled"),
    }
    return {name: load_split(*where[name]) for name in (*strategy.streams, *strategy.optional_streams)}


def fit_on_target(
    cfg: Config,
    model: TransferNet,
    strategy: Strategy,
    train_cfg: TrainConfig,
    same_classes: bool,
    log_metrics=None,
    desc: str = "finetune",
    state_path: Path | None = None,
    restart: bool = False,
) -> FitResult:
    """Prepare ``model`` with ``strategy`` and train it on the target data.

    Model selection uses the labelled target val split only when the target has labelled training images;
    with none (unsupervised adaptation, k = 0) the last epoch is kept and no target label is used.
    """
    paths = Paths.from_config(cfg)
    manifest = read_manifest(paths.target_data)
    device = resolve_device(cfg.base.device)
    ctx = TransferContext(len(manifest["classes"]), same_classes, paths.source_model, device)
    strategy.prepare(model, ctx)
    data = stream_data(paths, strategy)
    has_labels = manifest["splits"]["labeled"]["count"] > 0
    val = load_split(paths.target_data, "val")
    if not has_labels:
        val = Split(val.images[:0], val.labels[:0])
    module: torch.nn.Module = model
    space = strategy.feature_space(model, data, val, device)
    if space is not None:  # e.g. a linear probe on cached features: no per-step backbone, no augmentation
        module, data, val = space
        train_cfg = replace(train_cfg, augment=False)
    config_hash = cfg.section_hash("base", "model", "pretrain", "finetune") + manifest["version"]
    return train(
        module,
        strategy,
        train_cfg,
        data,
        val,
        cfg.base.seed,
        device,
        state_path,
        config_hash,
        log_metrics,
        desc,
        restart,
    )


def from_scratch(cfg: Config, log_metrics=None) -> TransferNet | None:
    """The baseline transfer must beat: the same architecture trained only on the labelled target data.

    Same budget as finetune (epochs, steps, batch, augmentation, selection) with the from-scratch learning
    rate of pretrain, since no weights are being preserved. None when the target has no labelled images.
    """
    manifest = read_manifest(Paths.from_config(cfg).target_data)
    if manifest["splits"]["labeled"]["count"] == 0:
        return None
    model = create_model(
        cfg.model.name, len(manifest["classes"]), "none", cfg.ingest.channels, cfg.model.width, cfg.model.dropout
    )
    budget = replace(cfg.finetune, lr=cfg.pretrain.lr)
    fit_on_target(
        cfg, model, Strategy(label_smoothing=budget.label_smoothing), budget, True, log_metrics, "from_scratch"
    )
    return model.eval()


def run(cfg: Config, tracker: NullTracker | None = None, restart: bool = False) -> StageResult:
    """Load the source checkpoint and transfer it to the target with the configured method."""
    tracker = tracker or NullTracker()
    start_stage(cfg)
    paths = Paths.from_config(cfg)
    target = read_manifest(paths.target_data)
    model, source_ckpt = load_model(paths.source_model)
    same = source_ckpt["classes"] == target["classes"]
    strategy = get_strategy(cfg.finetune.method, cfg.finetune.method_config, cfg.finetune.label_smoothing)
    labels_per_class = target["splits"]["labeled"]["count"] // max(1, len(target["classes"]))
    lin = lineage(
        cfg,
        source_version=source_ckpt["lineage"].get("source_version"),
        target_version=target["version"],
        source_checkpoint_sha256=file_sha256(paths.source_model),
        method=strategy.name,
        labels_per_class=labels_per_class,
        seed=cfg.base.seed,
    )
    log.info(
        "finetune: method %s, %s classes (%s source classes)",
        strategy.name,
        len(target["classes"]),
        "same" if same else "different",
    )
    with tracker.stage_run("finetune", cfg, {"transferops.method": strategy.name}):
        fit = fit_on_target(
            cfg, model, strategy, cfg.finetune, same, tracker.log_metrics, "finetune", paths.state("finetune"), restart
        )
        metrics = {
            "val_accuracy": fit.selected_val_accuracy(cfg.finetune.select_best),
            "labels_per_class": labels_per_class,
            "best_epoch": fit.best_epoch,
            "steps": fit.steps,
            "seconds": round(fit.seconds, 2),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        }
        result = write_trained_model("finetune", cfg, model, target["classes"], fit, metrics, lin, tracker)
    val = metrics["val_accuracy"]
    log.info(
        "finetune done in %.1fs: %s",
        fit.seconds,
        "no target labels read (k = 0)" if val is None else f"target val accuracy {val:.4f}",
    )
    return result
