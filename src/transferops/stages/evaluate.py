"""Evaluate: score the transferred model on the target test split, against two baselines. It trains nothing.

- ``source_only_accuracy``: the pretrained model with its source head, no target labels (null when the two
  domains' class sets differ);
- ``from_scratch_accuracy``: the model the ``baseline`` stage trained on the labelled target only, finetune's
  budget, pretrain's way of learning (null when there is none: k = 0 or ``evaluate.from_scratch_baseline: false``);
- ``transfer_gain`` = accuracy - from_scratch_accuracy;
- ``negative_transfer``: a sentence when the transferred model is worse than the source model as is, else null
  (:func:`transfer_guard`: target val accuracy at k > 0, a label-free collapse check at k = 0).

Outputs (``artifacts/evaluate``): ``metrics.json``, ``confusion_matrix.png``, ``reliability.png``,
``predictions.csv`` and ``calibration.csv`` (for ``dvc plots``), ``result.json``, and the reviewer's panels in
``review/`` (:mod:`transferops.evaluation.review`; ``tta_accuracy`` when ``evaluate.tta`` is set).
"""

from __future__ import annotations

import logging
from typing import Any

from transferops.config import Config
from transferops.data.shards import load_split, read_manifest
from transferops.errors import CheckpointError
from transferops.evaluation import plots, review
from transferops.evaluation.metrics import classification_report
from transferops.evaluation.tta import tta_metrics
from transferops.lineage import file_sha256, lineage
from transferops.models.inference import accuracy, predict_proba
from transferops.models.io import load_model
from transferops.paths import Paths
from transferops.stages.common import StageResult, save_resolved_config, staged_output, start_stage, write_json
from transferops.tracking import NullTracker
from transferops.training.seeding import resolve_device
from transferops.transfer.choice import CHOOSERS, possible_methods

log = logging.getLogger(__name__)


def run(cfg: Config, tracker: NullTracker | None = None) -> StageResult:
    """Score the finetuned model and the baselines on the target test split; write metrics and plots."""
    tracker = tracker or NullTracker()
    start_stage(cfg)
    paths = Paths.from_config(cfg)
    device = resolve_device(cfg.base.device)
    target = read_manifest(paths.target_data)
    classes = target["classes"]
    test = load_split(paths.target_data, "test")
    model, ckpt = load_model(paths.target_model)
    made = provenance(cfg, ckpt, target, paths)
    with tracker.stage_run("evaluate", cfg):
        probs = predict_proba(model.to(device), test, device=device)
        report = classification_report(probs, test.labels, classes, cfg.evaluate.ece_bins)
        source_only = None
        if cfg.evaluate.source_only_baseline:
            source_model, source_ckpt = load_model(paths.source_model)
            if source_ckpt["classes"] == classes:
                source_only = accuracy(source_model.to(device), test, device)
        scratch = None
        if paths.baseline_model.is_file():  # the baseline stage trained one (k > 0, not switched off)
            baseline, _ = load_model(paths.baseline_model)
            scratch = accuracy(baseline.to(device), test, device)
        guard = transfer_guard(cfg, model, paths, made["labels_per_class"], device)
        metrics = {
            "accuracy": report["accuracy"],
            "balanced_accuracy": report["balanced_accuracy"],
            "macro_f1": report["macro_f1"],
            "ece": report["ece"],
            "nll": report["nll"],
            "source_only_accuracy": source_only,
            "from_scratch_accuracy": scratch,
            "transfer_gain": None if scratch is None else report["accuracy"] - scratch,
            "n_test": len(test),
            "labels_per_class": made["labels_per_class"],
            "method": made["method"],
            "method_chosen_by": made["chosen_by"],
            "per_class_accuracy": report["per_class_accuracy"],
            **guard,
            **tta_metrics(model, test, cfg.evaluate.tta, probs, device),
        }
        if made["note"]:
            metrics["provenance_note"] = made["note"]
        lin = lineage(
            cfg,
            target_version=target["version"],
            model_sha256=file_sha256(paths.target_model),
            method=made["method"],
            labels_per_class=made["labels_per_class"],
            source_version=ckpt["lineage"].get("source_version"),
        )
        with staged_output(paths.stage("evaluate")) as out:
            preds = probs.argmax(1)
            plots.confusion_matrix_png(
                report["confusion_matrix"],
                classes,
                out / "confusion_matrix.png",
                f"{made['method']}: target test accuracy {report['accuracy']:.3f}",
            )
            plots.reliability_png(report["calibration"], report["ece"], out / "reliability.png")
            plots.predictions_csv(test.labels, preds, classes, out / "predictions.csv")
            write_json(out / "confusion_matrix.json", {"classes": classes, "matrix": report["confusion_matrix"]})
            plots.calibration_csv(report["calibration"], out / "calibration.csv")
            write_json(out / "metrics.json", metrics)
            save_resolved_config(cfg, out)
            result = StageResult(
                "evaluate", {"metrics": str(paths.stage("evaluate") / "metrics.json")}, metrics, tracker.run_id, lin
            )
            write_json(out / "result.json", result.to_file())
            tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, float)})
            tags = {"transferops.n_test": str(len(test)), "transferops.labels_per_class": str(made["labels_per_class"])}
            if metrics["negative_transfer"]:
                tags["transferops.negative_transfer"] = metrics["negative_transfer"]
            tracker.set_tags(tags)
            headline = ("accuracy", "transfer_gain", "source_only_accuracy", "from_scratch_accuracy", "macro_f1", "ece")
            tracker.log_to_parent({k: metrics[k] for k in headline if metrics.get(k) is not None})
            tracker.log_metrics({f"class_{c}_accuracy": a for c, a in report["per_class_accuracy"].items()})
            for name in ("confusion_matrix.png", "reliability.png", "metrics.json"):
                tracker.log_artifact(out / name, "evaluation")
            review.write_review(model, test, probs, classes, out, tracker, cfg.evaluate.review_per_class, device)
    if metrics["negative_transfer"]:
        log.warning("evaluate: %s", metrics["negative_transfer"])
    log.info(
        "evaluate: accuracy %.4f (source-only %s, from-scratch %s, gain %s), macro-F1 %.4f, ECE %.4f on %d test images",
        metrics["accuracy"],
        _fmt(source_only),
        _fmt(scratch),
        _fmt(metrics["transfer_gain"]),
        metrics["macro_f1"],
        metrics["ece"],
        len(test),
    )
    return result


COLLAPSE_MARGIN = 0.1
"""k = 0: adaptation collapsed when its prediction diversity on the unlabelled target is this much below the
source model's (or below :data:`COLLAPSE_FLOOR`)."""
COLLAPSE_FLOOR = 0.5


def transfer_guard(cfg: Config, model, paths: Paths, k: int | None, device) -> dict[str, Any]:
    """The negative-transfer guard: is the transferred model worse than the source model as is?

    - k > 0: both are scored on the labelled target val split (the split finetune selects on); the adapted
      model scoring below the source model is negative transfer.
    - k = 0: no target label may be read, so a label-free signal: the diversity of the predicted classes on
      the unlabelled target (:func:`~transferops.evaluation.selection.prediction_diversity`). Adaptation that
      collapsed puts the images into a few classes: its diversity falls :data:`COLLAPSE_MARGIN` below the
      source model's, or below :data:`COLLAPSE_FLOOR`.

    Needs the source model to predict the target's classes (otherwise nothing is compared). Returns the
    metrics to add: ``negative_transfer`` (a sentence, or None) and the figures compared.
    """
    from transferops.evaluation.selection import prediction_diversity
    from transferops.stages.finetune import monitor_sample

    target = read_manifest(paths.target_data)
    source_model, source_ckpt = load_model(paths.source_model)
    if source_ckpt["classes"] != target["classes"]:
        return {"negative_transfer": None}
    source_model = source_model.to(device)
    if k:
        val = load_split(paths.target_data, "val")
        if len(val) == 0:
            return {"negative_transfer": None}
        ours, theirs = accuracy(model, val, device), accuracy(source_model, val, device)
        note = None
        if ours < theirs:
            note = (
                f"negative transfer: on the labelled target val split ({len(val)} images) the transferred model "
                f"scores {ours:.1%}, below the source model as is ({theirs:.1%})"
            )
        return {"negative_transfer": note, "val_accuracy": ours, "source_only_val_accuracy": theirs}
    unlabeled = load_split(paths.target_data, "unlabeled")
    if len(unlabeled) < 2:
        return {"negative_transfer": None}
    sample = monitor_sample(unlabeled, cfg.base.seed)
    ours = prediction_diversity(predict_proba(model, sample, device=device))
    theirs = prediction_diversity(predict_proba(source_model, sample, device=device))
    note = None
    if ours < theirs - COLLAPSE_MARGIN or ours < COLLAPSE_FLOOR:
        note = (
            "adaptation collapsed (label-free check, k = 0): its predictions on the unlabelled target crowd into "
            f"few classes, diversity {ours:.2f} against the source model's {theirs:.2f} (1 = every class "
            "predicted equally often)"
        )
    return {"negative_transfer": note, "target_diversity": ours, "source_only_target_diversity": theirs}


def provenance(cfg: Config, ckpt: dict[str, Any], target: dict[str, Any], paths: Paths) -> dict[str, Any]:
    """What the evaluated checkpoint says about itself: its method and labels per class come from its own
    lineage, never from the current command line. A checkpoint trained on another version of the target data
    is refused (its test split may hold its training images); params that disagree with it are noted."""
    lin = ckpt.get("lineage", {})
    trained_on = lin.get("target_version")
    if trained_on is not None and trained_on != target["version"]:
        raise CheckpointError(
            f"{paths.target_model}: trained on target data version {trained_on}, but {paths.target_data} is "
            f"version {target['version']}; re-run finetune on this data"
        )
    method = lin.get("method") or ckpt["config"]["finetune"]["method"]
    k = lin.get("labels_per_class", ckpt["config"]["ingest"]["target"]["split"]["labels_per_class"])
    notes = []
    chosen_from_data = cfg.finetune.method in CHOOSERS and method in possible_methods(cfg.finetune)
    if cfg.finetune.method != method and not chosen_from_data:
        notes.append(f"params say finetune.method={cfg.finetune.method}, the checkpoint was trained with {method}")
    asked = cfg.ingest.target.split.labels_per_class
    if asked is not None and asked != k:
        notes.append(f"params say labels_per_class={asked}, the checkpoint was trained with {k}")
    note = "; ".join(notes) + ("; reporting what the checkpoint records" if notes else "")
    if note:
        log.warning("evaluate: %s", note)
    return {"method": method, "labels_per_class": k, "note": note, "chosen_by": lin.get("method_choice")}


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
