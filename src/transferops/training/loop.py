"""The training loop every stage shares: ``fit`` -> ``train_one_epoch`` -> ``evaluate``.

What is method-specific lives in the :class:`~transferops.transfer.Strategy`; what is run-specific (budget,
optimiser, schedule) in :class:`~transferops.config.TrainConfig`. The loop adds what a production run needs:
a progress bar, one log line per epoch, metrics to the tracker, best-validation selection, early stopping,
a NaN guard, and a full training-state checkpoint (model, optimiser, scheduler, RNG states, step, best so
far) at every epoch end and every ``checkpoint_every_steps`` steps, so a preempted run resumes exactly.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from transferops.config import TrainConfig
from transferops.data.batches import BatchStream, augment, iterate
from transferops.data.shards import Split
from transferops.errors import CheckpointError, TrainingError
from transferops.models import TransferNet
from transferops.training.checkpoint import load_checkpoint, save_checkpoint
from transferops.training.seeding import rng_state, set_rng_state

if TYPE_CHECKING:
    from transferops.transfer import Strategy

log = logging.getLogger(__name__)

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": lambda groups, lr, wd: torch.optim.AdamW(groups, lr=lr, weight_decay=wd),
    "adam": lambda groups, lr, wd: torch.optim.Adam(groups, lr=lr, weight_decay=wd),
    "sgd": lambda groups, lr, wd: torch.optim.SGD(groups, lr=lr, weight_decay=wd, momentum=0.9, nesterov=True),
}


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


SCHEDULES: dict[str, Callable[[int, int, int], float]] = {
    "cosine": _cosine,
    "constant": lambda step, total, warmup: min(1.0, (step + 1) / warmup) if warmup else 1.0,
    "step": lambda step, total, warmup: 0.1 ** (3 * step // max(1, total)),
}


def build_optimizer(cfg: TrainConfig, groups: list[dict[str, Any]], total_steps: int):
    """Optimiser and LR schedule by name (registries, no if/elif ladder)."""
    if cfg.optimizer not in OPTIMIZERS:
        raise TrainingError(f"optimizer: unknown {cfg.optimizer!r} (expected one of {', '.join(OPTIMIZERS)})")
    if cfg.scheduler not in SCHEDULES:
        raise TrainingError(f"scheduler: unknown {cfg.scheduler!r} (expected one of {', '.join(SCHEDULES)})")
    opt = OPTIMIZERS[cfg.optimizer](groups, cfg.lr, cfg.weight_decay)
    fn = SCHEDULES[cfg.scheduler]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: fn(s, total_steps, cfg.warmup_steps))
    return opt, sched


@torch.no_grad()
def predict(model: nn.Module, split: Split, batch_size: int = 512, device: torch.device | str = "cpu") -> np.ndarray:
    """Class probabilities (N, K) of ``model`` on a split, in order."""
    was_training = model.training
    model.eval()
    probs = [torch.softmax(model(x.to(device)), dim=1).cpu() for x, _ in iterate(split, batch_size)]
    model.train(was_training)
    if not probs:
        return np.empty((0, 0), dtype=np.float32)
    return torch.cat(probs).numpy()


@torch.no_grad()
def predict_features(model: TransferNet, split: Split, batch_size: int = 512, device: torch.device | str = "cpu"):
    """Backbone features (N, D) of a split as a float32 numpy array, in eval mode (what a linear probe caches)."""
    was_training = model.training
    model.eval()
    feats = [model.features(x.to(device)).cpu() for x, _ in iterate(split, batch_size)]
    model.train(was_training)
    return torch.cat(feats).numpy() if feats else np.empty((0, model.feature_dim), dtype=np.float32)


def accuracy(model: nn.Module, split: Split, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy on a split (nan when the split is empty)."""
    if len(split) == 0:
        return float("nan")
    return float((predict(model, split, device=device).argmax(1) == split.labels).mean())


@dataclass
class FitResult:
    """What a finished ``fit`` reports."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_val_accuracy: float = float("nan")
    steps: int = 0
    seconds: float = 0.0
    resumed_from_step: int = 0

    def selected_val_accuracy(self, select_best: bool) -> float | None:
        """Val accuracy of the weights kept (best epoch or last); None when no val split was read."""
        acc = self.best_val_accuracy if select_best else self.history[-1]["val_accuracy"]
        return None if math.isnan(acc) else acc


class Trainer:
    """One training run of ``model`` with ``strategy``; see the module docstring.

    ``model`` is usually a :class:`TransferNet`; a strategy may train a smaller module instead (a linear
    probe trains just the head on cached features).

    Args:
        streams: the batch streams the strategy asks for (``strategy.streams``).
        val: split for model selection (may be empty: the last epoch is kept).
        state_path: where the resumable training state lives; ``None`` disables checkpointing.
        config_hash: identifies the config; a state saved under another hash is refused.
        log_metrics: callback(metrics, step) (the MLflow tracker, or nothing).
    """

    def __init__(
        self,
        model: nn.Module,
        strategy: Strategy,
        cfg: TrainConfig,
        streams: dict[str, BatchStream],
        val: Split,
        device: torch.device,
        seed: int,
        state_path: Path | None = None,
        config_hash: str = "",
        log_metrics: Callable[[dict[str, float], int], None] | None = None,
        desc: str = "train",
    ) -> None:
        missing = [s for s in strategy.streams if s not in streams]
        if missing:
            raise TrainingError(f"method {strategy.name!r} needs data splits {missing} that are empty or absent")
        self.active = list(strategy.streams) + [s for s in strategy.optional_streams if s in streams]
        self.model, self.strategy, self.cfg = model.to(device), strategy, cfg
        self.extra = strategy.modules().to(device)
        self.streams, self.val, self.device, self.seed = streams, val, device, seed
        self.state_path, self.config_hash = state_path, config_hash
        self.log_metrics = log_metrics or (lambda metrics, step: None)
        self.desc = desc
        self.steps_per_epoch = cfg.steps_per_epoch or streams[strategy.streams[0]].steps_per_pass
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.optimizer, self.scheduler = build_optimizer(cfg, strategy.param_groups(model, cfg.lr), self.total_steps)
        self.step = 0
        self.result = FitResult()
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0
        self.running: dict[str, float] = {}

    # ---------------------------------------------------------------------------------- state
    def _state(self) -> dict[str, Any]:
        return {
            "config_hash": self.config_hash,
            "step": self.step,
            "model": self.model.state_dict(),
            "extra": self.extra.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "best_state": self.best_state,
            "best_epoch": self.result.best_epoch,
            "best_val_accuracy": self.result.best_val_accuracy,
            "bad_epochs": self.bad_epochs,
            "history": self.result.history,
            "running": self.running,
        }

    def save_state(self) -> None:
        if self.state_path is not None:
            save_checkpoint(self.state_path, self._state())

    def try_resume(self) -> bool:
        """Resume from ``state_path`` when it holds a state of the same config; refuse another config's."""
        if self.state_path is None or not self.state_path.is_file():
            return False
        state = load_checkpoint(self.state_path)
        if state.get("config_hash") != self.config_hash:
            raise CheckpointError(
                f"{self.state_path}: training state belongs to another config (hash {state.get('config_hash')} != "
                f"{self.config_hash}); delete it or pass --restart"
            )
        self.model.load_state_dict(state["model"])
        self.extra.load_state_dict(state["extra"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.step = state["step"]
        self.best_state = state["best_state"]
        self.result.best_epoch = state["best_epoch"]
        self.result.best_val_accuracy = state["best_val_accuracy"]
        self.bad_epochs = state["bad_epochs"]
        self.result.history = state["history"]
        self.running = state["running"]
        self.result.resumed_from_step = self.step
        log.info("%s: resumed from %s at step %d/%d", self.desc, self.state_path, self.step, self.total_steps)
        return True

    # ---------------------------------------------------------------------------------- loop
    def _batches(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        out = {}
        for i, name in enumerate(self.active):
            x, y = self.streams[name].batch(self.step)
            x = x.to(self.device, non_blocking=True)
            if self.cfg.augment:
                x = augment(x, self.seed + i, self.step)
            out[name] = (x, y.to(self.device, non_blocking=True))
        return out

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        self.strategy.on_epoch_start(self.model, epoch)
        self.strategy.train_mode(self.model)
        start = self.step - epoch * self.steps_per_epoch
        bar = tqdm(
            range(start, self.steps_per_epoch),
            desc=f"{self.desc} epoch {epoch + 1}/{self.cfg.epochs}",
            disable=not sys.stderr.isatty(),
            leave=False,
        )
        for _ in bar:
            loss, parts = self.strategy.loss(self.model, self._batches(), self.step / self.total_steps)
            if not torch.isfinite(loss):
                where = f"; last good state kept at {self.state_path}" if self.state_path else ""
                raise TrainingError(f"{self.desc}: loss is {loss.item()} at step {self.step} (diverged){where}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            for k, v in {"loss": loss.item(), **parts}.items():
                self.running[k] = self.running.get(k, 0.0) + v
            self.running["n"] = self.running.get("n", 0.0) + 1
            bar.set_postfix(loss=f"{loss.item():.3f}")
            every = self.cfg.checkpoint_every_steps
            if every and self.step % every == 0 and self.step % self.steps_per_epoch:
                self.save_state()
        n = max(1.0, self.running.pop("n", 1.0))
        metrics = {f"train_{k}": v / n for k, v in self.running.items()}
        self.running = {}
        return metrics

    def fit(self) -> FitResult:
        """Train for the configured budget (resuming when a matching state exists) and keep the best weights."""
        t0 = time.perf_counter()
        first_epoch = self.step // self.steps_per_epoch
        for epoch in range(first_epoch, self.cfg.epochs):
            metrics = self.train_one_epoch(epoch)
            metrics["val_accuracy"] = accuracy(self.model, self.val, self.device)
            metrics["lr"] = self.optimizer.param_groups[0]["lr"]
            self.result.history.append({"epoch": epoch + 1, **metrics})
            self.log_metrics(metrics, epoch + 1)
            log.info(
                "%s epoch %d/%d  %s",
                self.desc,
                epoch + 1,
                self.cfg.epochs,
                "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()),
            )
            stop = self._select(epoch, metrics["val_accuracy"])
            self.save_state()
            if stop:
                log.info(
                    "%s: early stop after epoch %d (no val improvement for %d epochs)",
                    self.desc,
                    epoch + 1,
                    self.bad_epochs,
                )
                break
        if self.cfg.select_best and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.result.steps = self.step
        self.result.seconds = time.perf_counter() - t0
        return self.result

    def _select(self, epoch: int, val_acc: float) -> bool:
        if math.isnan(val_acc):
            return False
        best = self.result.best_val_accuracy
        if math.isnan(best) or val_acc > best:
            self.result.best_epoch, self.result.best_val_accuracy = epoch + 1, val_acc
            self.best_state = copy.deepcopy(self.model.state_dict()) if self.cfg.select_best else None
            self.bad_epochs = 0
            return False
        self.bad_epochs += 1
        patience = self.cfg.early_stopping_patience
        return bool(patience) and self.bad_epochs >= patience


def train(
    model: nn.Module,
    strategy: Strategy,
    cfg: TrainConfig,
    data: dict[str, Split],
    val: Split,
    seed: int,
    device: torch.device,
    state_path: Path | None = None,
    config_hash: str = "",
    log_metrics: Callable[[dict[str, float], int], None] | None = None,
    desc: str = "train",
    restart: bool = False,
) -> FitResult:
    """Build batch streams for the splits the strategy needs, then resume-or-start and fit.

    ``data`` maps stream names (``labeled``, ``source``, ``unlabeled``) to splits; empty splits are left out
    so a method that needs one fails with a message naming it. ``restart`` discards a saved state.
    """
    streams = {
        name: BatchStream(split, cfg.batch_size, seed, stream=i)
        for i, (name, split) in enumerate(data.items())
        if len(split) > 0
    }
    trainer = Trainer(model, strategy, cfg, streams, val, device, seed, state_path, config_hash, log_metrics, desc)
    if restart and state_path is not None:
        state_path.unlink(missing_ok=True)
    trainer.try_resume()
    result = trainer.fit()
    if state_path is not None:  # finished: the next run starts afresh
        state_path.unlink(missing_ok=True)
    return result
