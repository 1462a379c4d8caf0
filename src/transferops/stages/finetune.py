"""Stage 3, finetune: transfer the source model to the target domain with the method ``finetune.method``.

The method is a strategy object from :mod:`transferops.transfer`; this stage only wires data and budget.
Outputs (``artifacts/finetune``): ``model.pt``, ``metrics.json``, ``history.json``, ``result.json``.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch

from transferops.config import Config, TrainConfig
from transferops.data.shards import Split, load_split, read_manifest
from transferops.errors import CheckpointError
from transferops.lineage import file_sha256, lineage
from transferops.models import TransferNet, model_from_config
from transferops.models.io import load_model, model_config_of
from transferops.paths import Paths
from transferops.stages.common import StageResult, start_stage, state_store, training_setup, write_trained_model
from transferops.tracking import NullTracker
from transferops.training import distributed
from transferops.training.checkpoint import load_model_checkpoint
from transferops.training.distributed import SINGLE, Distributed
from transferops.training.loop import FitResult, load_resume_state, train
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
    store=None,
    saved: dict | None = None,
    run_id: str | None = None,
    dist: Distributed = SINGLE,
    device: torch.device | None = None,
) -> FitResult:
    """Prepare ``model`` with ``strategy`` and train it on the target data.

    Model selection uses the labelled target val split only when the target has labelled training images;
    with none (unsupervised adaptation, k = 0) the last epoch is kept and no target label is used.
    """
    paths = Paths.from_config(cfg)
    manifest = read_manifest(paths.target_data)
    device = device or resolve_device(cfg.base.device)
    ctx = TransferContext(len(manifest["classes"]), same_classes, paths.source_model, device)
    strategy.prepare(model, ctx)
    data = stream_data(paths, strategy)
    has_labels = manifest["splits"]["labeled"]["count"] > 0
    val = load_split(paths.target_data, "val")
    if not has_labels:
        val = val.head(0)
    module: torch.nn.Module = model
    space = strategy.feature_space(model, data, val, device)
    if space is not None:  # e.g. a linear probe on cached features: no per-step backbone, no augmentation
        module, data, val = space
        train_cfg = replace(train_cfg, augment="none")
    return train(
        module,
        strategy,
        train_cfg,
        data,
        val,
        cfg.base.seed,
        device,
        store,
        finetune_hash(cfg, manifest),
        log_metrics,
        desc,
        resume_from=saved,
        run_id=run_id,
        dist=dist,
    )


def finetune_hash(cfg: Config, target_manifest: dict) -> str:
    """Identifies a finetune run: a saved state of another one is refused."""
    return cfg.section_hash("base", "model", "pretrain", "finetune") + target_manifest["version"]


def from_scratch(cfg: Config, log_metrics=None) -> TransferNet | None:
    """The baseline transfer must beat: the same architecture trained only on the labelled target data.

    Same budget as finetune (epochs, steps, batch, augmentation, selection) with the from-scratch learning
    rate of pretrain, since no weights are being preserved. None when the target has no labelled images.
    """
    paths = Paths.from_config(cfg)
    manifest = read_manifest(paths.target_data)
    if manifest["splits"]["labeled"]["count"] == 0:
        return None
    # the architecture the transferred model has (the source checkpoint's), with fresh weights
    arch = model_config_of(load_model_checkpoint(paths.source_model))
    model = model_from_config(arch, len(manifest["classes"]), manifest["image_shape"][0], weights="none")
    budget = replace(cfg.finetune, lr=cfg.pretrain.lr)
    fit_on_target(
        cfg, model, Strategy(label_smoothing=budget.label_smoothing), budget, True, log_metrics, "from_scratch"
    )
    return model.eval()


def run(cfg: Config, tracker: NullTracker | None = None, restart: bool = False) -> StageResult:
    """Load the source checkpoint and transfer it to the target with the configured method."""
    tracker = tracker or NullTracker()
    start_stage(cfg)
    dist, device, tracker = training_setup(cfg, tracker)
    paths = Paths.from_config(cfg)
    target = read_manifest(paths.target_data)
    model, source_ckpt = load_model(paths.source_model)
    same = source_ckpt["classes"] == target["classes"]
    if [source_ckpt["in_channels"], source_ckpt["image_size"]] != target["image_shape"][:2]:
        raise CheckpointError(
            f"{paths.source_model}: trained on {source_ckpt['in_channels']}x{source_ckpt['image_size']}px images, "
            f"the target is {target['image_shape'][0]}x{target['image_shape'][1]}px; re-run pretrain after ingest"
        )
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
    store = state_store(cfg, "finetune")
    saved = load_resume_state(store, finetune_hash(cfg, target), restart)
    tags = {"transferops.method": strategy.name}
    with tracker.stage_run("finetune", cfg, tags, resume_run_id=saved and saved.get("tracking_run_id")):
        fit = fit_on_target(
            cfg,
            model,
            strategy,
            cfg.finetune,
            same,
            tracker.log_metrics,
            "finetune",
            store,
            saved,
            tracker.run_id,
            dist,
            device,
        )
        metrics = {
            "val_accuracy": fit.selected_val_accuracy(cfg.finetune.select_best),
            "labels_per_class": labels_per_class,
            "best_epoch": fit.best_epoch,
            "steps": fit.steps,
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        }
        if dist.is_main:
            result = write_trained_model(
                "finetune", cfg, model, target["classes"], target["image_shape"], fit, metrics, lin, tracker
            )
    distributed.barrier(dist)
    distributed.cleanup(dist)
    if not dist.is_main:
        return StageResult("finetune", metrics=metrics, lineage=lin)
    val = metrics["val_accuracy"]
    log.info(
        "finetune done in %.1fs: %s",
        fit.seconds,
        "no target labels read (k = 0)" if val is None else f"target val accuracy {val:.4f}",
    )
    return result
