"""Finetune: transfer the source model to the target domain with the method ``finetune.method``.

The method is a strategy object from :mod:`transferops.transfer`; this stage only wires data and budget.
Outputs (``artifacts/finetune``): ``model.pt``, ``metrics.json``, ``history.json``, ``result.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from transferops.config import Config, TrainConfig
from transferops.data.shards import Split, load_split, read_manifest
from transferops.errors import CheckpointError, ConfigError
from transferops.lineage import file_sha256, lineage
from transferops.models import TransferNet
from transferops.models.inference import predict_proba
from transferops.models.io import load_model
from transferops.paths import Paths
from transferops.stages.common import StageResult, start_stage, state_store, training_setup, write_trained_model
from transferops.tracking import NullTracker
from transferops.training import distributed
from transferops.training.distributed import SINGLE, Distributed
from transferops.training.loop import FitResult, TrainRun, load_resume_state, train
from transferops.training.seeding import resolve_device, rng_preserved
from transferops.transfer import Strategy, TransferContext, get_strategy
from transferops.transfer.choice import AUTO, CHOOSERS, Choice, TargetFacts, resolve_recipe

log = logging.getLogger(__name__)


def stream_data(paths: Paths, strategy: Strategy) -> dict[str, Split]:
    """The splits behind each batch stream a strategy asks for (required and optional)."""
    where = {
        "labeled": (paths.target_data, "labeled"),
        "unlabeled": (paths.target_data, "unlabeled"),
        "source": (paths.source_data, "labeled"),
    }
    return {name: load_split(*where[name]) for name in (*strategy.streams, *strategy.optional_streams)}


@dataclass(frozen=True)
class Selection:
    """How ``finetune.select`` turns into the training loop's arguments."""

    select_best: bool
    select_on: str
    keep_val: bool
    """Whether the labelled target val split is read (never at k = 0)."""
    describe: str


def selection(select: str, has_labels: bool) -> Selection:
    """``last``, ``val`` (the last epoch when there is no labelled target image) or a label-free criterion."""
    if select == "last":
        return Selection(False, "val_accuracy", has_labels, "last epoch")
    if select == "val":
        if has_labels:
            return Selection(True, "val_accuracy", True, "best target val accuracy")
        return Selection(False, "val_accuracy", False, "last epoch (k = 0: no target label is read)")
    return Selection(True, f"target_{select}", has_labels, f"best {select} on the unlabelled target (label-free)")


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """scikit-learn's "balanced" weights, n / (K' n_c) over the K' classes present; 0 for an absent class
    (it never appears as a label, so its weight is never read). Equal counts give all ones."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.where(present, counts.sum() / (max(1, present.sum()) * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def apply_class_balance(strategy: Strategy, mode: str, data: dict[str, Split], num_classes: int) -> tuple[str, ...]:
    """Set up ``finetune.class_balance`` on the labelled target stream: class weights on the strategy's target
    cross-entropy (``weighted``), or the streams to draw class-balanced (``sampler``, returned)."""
    labeled = data.get("labeled")
    if mode == "none" or labeled is None or len(labeled) == 0:
        return ()
    if mode == "weighted":
        strategy.class_weight = balanced_class_weights(labeled.labels, num_classes)
        return ()
    return ("labeled",)


MONITOR_IMAGES = 1000
"""Unlabelled target images scored after every epoch (a fixed seeded sample): label-free criteria."""


def monitor_sample(split: Split, seed: int, n: int = MONITOR_IMAGES) -> Split:
    """A fixed seeded sample of ``split`` with its labels blanked (-1): the monitor can never read them."""
    idx = np.sort(np.random.default_rng(seed).permutation(len(split))[:n])
    images = split.images.take(idx) if hasattr(split.images, "take") else np.asarray(split.images)[idx]
    return Split(images, np.full(len(idx), -1, dtype=np.int64))


def label_free_monitor(unlabeled: Split, device: torch.device, precision: str):
    """Per-epoch label-free metrics on unlabelled target images: every criterion of
    :data:`~transferops.evaluation.selection.CRITERIA` (``target_<name>``), the prediction diversity and the
    mean prediction entropy (a collapse shows as diversity and entropy falling towards 0)."""
    from transferops.evaluation.selection import CRITERIA, prediction_diversity

    def monitor(model: torch.nn.Module, epoch: int) -> dict[str, float]:
        probs = predict_proba(model, unlabeled, device=device, precision=precision)
        ent = float(-(probs * np.log(np.clip(probs, 1e-12, None))).sum(1).mean())
        return {
            **{f"target_{name}": fn(probs) for name, fn in CRITERIA.items()},
            "target_diversity": prediction_diversity(probs),
            "target_eval_entropy": ent,
        }

    return monitor


def fit_on_target(
    cfg: Config,
    model: TransferNet,
    strategy: Strategy,
    train_cfg: TrainConfig,
    *,
    same_classes: bool,
    log_metrics=None,
    desc: str = "finetune",
    store=None,
    saved: dict | None = None,
    run_id: str | None = None,
    dist: Distributed = SINGLE,
    device: torch.device | None = None,
    epoch_probe: Callable[[torch.nn.Module, int], None] | None = None,
    class_balance: str = "none",
    monitor: bool = True,
) -> FitResult:
    """Prepare ``model`` with ``strategy`` and train it on the target data.

    ``train_cfg.select`` chooses the weights kept (:func:`selection`): at k = 0 no target label is read, so
    only ``last`` or a label-free criterion can choose. With an unlabelled target split, label-free metrics
    are logged after every epoch (:func:`label_free_monitor`). ``epoch_probe(model, epoch)`` is called after
    every epoch too (benchmarks use it to score epochs offline; it cannot change training). ``class_balance``
    is ``finetune.class_balance`` (:func:`apply_class_balance`); ``monitor`` false skips the label-free monitor
    (the ``auto`` search selects on val accuracy only).
    """
    paths = Paths.from_config(cfg)
    manifest = read_manifest(paths.target_data)
    device = device or resolve_device(cfg.base.device)
    ctx = TransferContext(len(manifest["classes"]), same_classes, paths.source_model, device, cfg.base.seed)
    strategy.prepare(model, ctx)
    data = stream_data(paths, strategy)
    strategy.attach(data, device)
    balanced = apply_class_balance(strategy, class_balance, data, ctx.num_classes)
    has_labels = manifest["splits"]["labeled"]["count"] > 0
    sel = selection(train_cfg.select, has_labels)
    val = load_split(paths.target_data, "val")
    if not sel.keep_val:
        val = val.head(0)
    budget = train_cfg.budget(select_best=sel.select_best)
    hooks = []
    if monitor and manifest["splits"]["unlabeled"]["count"] > 1:
        unlabeled = monitor_sample(load_split(paths.target_data, "unlabeled"), cfg.base.seed)
        hooks.append(label_free_monitor(unlabeled, device, budget.precision))
    elif sel.select_on != "val_accuracy":
        raise ConfigError(f"finetune.select: {train_cfg.select} needs unlabelled target images; there are none")
    if epoch_probe is not None:
        hooks.append(lambda m, e: epoch_probe(m, e) or {})
    module: torch.nn.Module = model
    space = strategy.feature_space(model, data, val, device)
    if space is not None:  # e.g. a linear probe on cached features: no per-step backbone, no augmentation
        module, data, val = space
        budget = replace(budget, augment="none")
    log.info("%s: keeping the %s", desc, sel.describe)

    def epoch_end(_trained: torch.nn.Module, epoch: int) -> dict[str, float]:
        # the whole model, also when only a part of it trains (a probe's head on cached features)
        return {k: v for hook in hooks for k, v in hook(model, epoch).items()}

    run = TrainRun(
        cfg.base.seed,
        device,
        desc,
        store,
        finetune_hash(cfg, manifest),
        log_metrics,
        run_id=run_id,
        dist=dist,
        epoch_end=epoch_end if hooks else None,
        select_on=sel.select_on,
        balanced_streams=balanced,
    )
    return train(module, strategy, budget, data, val, run, resume_from=saved)


def choose_method(
    cfg: Config, target: dict, source_classes: list[str], *, device: torch.device, log_metrics=None
) -> Choice:
    """The method finetune trains: ``finetune.method`` itself, or what ``recipe`` / ``auto`` choose from the
    target's image counts and classes (:mod:`transferops.transfer.choice`); ``auto`` at k = 0 has no labelled
    val image to select on and takes the recipe's method."""
    method = cfg.finetune.method
    if method not in CHOOSERS:
        return Choice(method, method, "finetune.method")
    facts = TargetFacts.of(target, source_classes)
    if method == AUTO and facts.labeled > 0:
        return search_method(cfg, facts, target, device=device, log_metrics=log_metrics)
    choice = resolve_recipe(facts)
    if method == AUTO:
        return Choice(choice.method, AUTO, f"auto at k = 0 (no labelled val image to select on), {choice.reason}")
    return choice


def _cannot_run(strategy: Strategy, facts: TargetFacts, paths: Paths) -> str | None:
    """Why a candidate cannot train on this data (a stream it needs is empty), or None."""
    have = {"labeled": facts.labeled > 0, "unlabeled": facts.unlabeled > 0, "source": paths.source_data.is_dir()}
    missing = [s for s in strategy.streams if not have[s]]
    return f"needs {', '.join(missing)} images, there are none" if missing else None


def search_method(cfg: Config, facts: TargetFacts, target: dict, *, device: torch.device, log_metrics=None) -> Choice:
    """``finetune.method: auto``: train each of ``finetune.auto.candidates`` for ``auto.epochs`` from the source
    model and score it on the labelled target **val** split (never the test split).

    Selection noise: with a few val images per class one image moves the score by 1/n_val, so the default, the
    recipe's method for this data (:func:`search_order`), is kept unless another candidate beats it by more than
    ``auto.min_margin``; among the others ties go to the earlier candidate. Every candidate's score is logged
    (``auto_val_accuracy_<method>``) and returned with the skipped ones, the spread of the scores and each score's
    binomial standard error.
    """
    auto, paths = cfg.finetune.auto, Paths.from_config(cfg)
    n_val = target["splits"]["val"]["count"]
    if n_val == 0:
        raise ConfigError(
            "finetune.method: auto selects on the labelled target val split, which is empty "
            "(ingest.target.split.val_per_class)"
        )
    budget = replace(cfg.finetune, epochs=auto.epochs, select="val")
    scores: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for method in search_order(auto.candidates, resolve_recipe(facts).method):
        strategy = get_strategy(method, cfg.finetune.settings(method), cfg.finetune.label_smoothing)
        why = _cannot_run(strategy, facts, paths)
        if why is None:
            try:
                with rng_preserved():  # every candidate starts from the same draws, whatever its place in the list
                    model, _ = load_model(paths.source_model)
                    fit = fit_on_target(
                        cfg,
                        model,
                        strategy,
                        budget,
                        same_classes=facts.same_classes,
                        desc=f"auto {method}",
                        device=device,
                        class_balance=cfg.finetune.class_balance,
                        monitor=False,
                    )
                scores[method] = fit.best_val_accuracy
            except ConfigError as exc:  # e.g. domain adaptation on a new class set
                why = str(exc)
        if why is not None:
            skipped[method] = why
            log.info("auto: %s skipped (%s)", method, why)
            continue
        log.info("auto: %s val accuracy %.4f after %d epochs", method, scores[method], auto.epochs)
        if log_metrics is not None:
            log_metrics({f"auto_val_accuracy_{method}": scores[method]}, None)
    if not scores:
        raise ConfigError(f"finetune.auto.candidates: none can train on this target ({skipped})")
    winner = pick(scores, auto.min_margin)
    default = next(iter(scores))
    spread = max(scores.values()) - min(scores.values())
    search = {
        "scores": scores,
        "skipped": skipped,
        "default": default,
        "winner": winner,
        "n_val": n_val,
        "spread": spread,
        "standard_error": {m: float(np.sqrt(s * (1 - s) / n_val)) for m, s in scores.items()},
        "min_margin": auto.min_margin,
        "epochs": auto.epochs,
    }
    reason = (
        f"auto: {winner} val {scores[winner]:.3f} of {len(scores)} candidates after {auto.epochs} epochs "
        f"(default {default} {scores[default]:.3f}, margin {auto.min_margin:.3f}, spread {spread:.3f}, "
        f"{n_val} val images)"
    )
    return Choice(winner, AUTO, reason, search)


def search_order(candidates: list[str], recipe_method: str) -> list[str]:
    """The candidates with the recipe's method first: it is the default a search must beat, so that when a
    short search cannot tell the methods apart (a spread of one val image) the user gets what ``recipe``
    would have given, not whichever method happens to be listed first."""
    return [recipe_method, *(m for m in candidates if m != recipe_method)]


def pick(scores: dict[str, float], min_margin: float) -> str:
    """The first entry (the default) unless the best other beats it by more than ``min_margin``; ties among
    the others go to the earlier one."""
    default = next(iter(scores))
    best = max(scores, key=lambda m: (scores[m], -list(scores).index(m)))
    return best if scores[best] > scores[default] + min_margin else default


def finetune_hash(cfg: Config, target_manifest: dict) -> str:
    """Identifies a finetune run: a saved state of another one is refused."""
    return cfg.section_hash("base", "model", "pretrain", "finetune") + target_manifest["version"]


def run(
    cfg: Config,
    tracker: NullTracker | None = None,
    restart: bool = False,
    epoch_probe: Callable[[torch.nn.Module, int], None] | None = None,
) -> StageResult:
    """Load the source checkpoint and transfer it to the target with the configured method (``epoch_probe``:
    see :func:`fit_on_target`)."""
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
    labels_per_class = target["splits"]["labeled"]["count"] // max(1, len(target["classes"]))
    store = state_store(cfg, "finetune")
    saved = load_resume_state(store, finetune_hash(cfg, target), restart)
    tags = {"transferops.method_choice": cfg.finetune.method}
    with tracker.stage_run("finetune", cfg, tags, resume_run_id=saved and saved.get("tracking_run_id")):
        with rng_preserved():  # auto's search leaves the final training the draws `method: <winner>` gets
            choice = choose_method(cfg, target, source_ckpt["classes"], device=device, log_metrics=tracker.log_metrics)
        strategy = get_strategy(choice.method, cfg.finetune.settings(choice.method), cfg.finetune.label_smoothing)
        tracker.set_tags({"transferops.method": strategy.name, "transferops.method_reason": choice.reason})
        lin = lineage(
            cfg,
            source_version=source_ckpt["lineage"].get("source_version"),
            target_version=target["version"],
            source_checkpoint_sha256=file_sha256(paths.source_model),
            method=strategy.name,
            method_choice=choice.chosen_by,
            labels_per_class=labels_per_class,
            seed=cfg.base.seed,
        )
        log.info(
            "finetune: method %s (%s), %s classes (%s source classes: %s)",
            strategy.name,
            choice.reason,
            len(target["classes"]),
            "same" if same else "different",
            "source head kept" if same else "a new head",
        )
        fit = fit_on_target(
            cfg,
            model,
            strategy,
            cfg.finetune,
            same_classes=same,
            log_metrics=tracker.log_metrics,
            desc="finetune",
            store=store,
            saved=saved,
            run_id=tracker.run_id,
            dist=dist,
            device=device,
            epoch_probe=epoch_probe,
            class_balance=cfg.finetune.class_balance,
        )
        metrics = {
            "method": strategy.name,
            "method_chosen_by": choice.chosen_by,
            "method_reason": choice.reason,
            **({"auto": choice.search} if choice.search is not None else {}),
            "val_accuracy": fit.selected_val_accuracy(cfg.finetune.select != "last"),
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
