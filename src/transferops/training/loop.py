"""The training loop every stage shares: ``fit`` -> ``train_one_epoch`` -> validate.

What is method-specific lives in the :class:`~transferops.transfer.Strategy`; what is run-specific (budget,
optimiser, schedule, precision) in :class:`~transferops.config.TrainConfig`. The loop adds what a production
run needs: batches prefetched in a background thread and copied asynchronously, autocast (bf16/fp16 with a
gradient scaler), channels-last and ``torch.compile`` on request, losses accumulated on the device and read
every ``log_every_steps`` (one host-device sync per window, not per step), a progress bar, one log line and
the throughput per epoch, best-validation selection, early stopping, a NaN guard, and a full training-state
checkpoint (model, optimiser, scheduler, scaler, RNG states, step, best so far, elapsed time, the MLflow run)
at every epoch end and every ``checkpoint_every_steps`` steps, in a :class:`~transferops.training.state.
StateStore`, so a preempted run resumes exactly, in the same MLflow run.

On CPU in fp32 the loop is bit-identical to a plain loop: same seed, same metrics; resume after a kill gives
the same weights.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm.auto import tqdm

from transferops.config import TrainConfig
from transferops.data.augment import train_transform
from transferops.data.batches import BalancedBatchStream, BatchStream, Prefetcher, to_float
from transferops.data.shards import Split
from transferops.errors import CheckpointError, TrainingError
from transferops.models.inference import accuracy, autocast
from transferops.training import distributed
from transferops.training.distributed import SINGLE, Distributed
from transferops.training.seeding import rng_state, set_rng_state
from transferops.training.state import StateStore

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


@dataclass
class FitResult:
    """What a finished ``fit`` reports."""

    history: list[dict[str, float]] = field(default_factory=list)
    """Per epoch, deterministic values only (losses, val accuracy, lr): what DVC plots and compares."""
    timing: list[dict[str, float]] = field(default_factory=list)
    """Per epoch: seconds, throughput_img_s, gpu_memory_peak_gb (they vary run to run: MLflow only)."""
    best_epoch: int = -1
    best_val_accuracy: float = float("nan")
    """Val accuracy of the best epoch (nan when no val split was read)."""
    best_score: float = float("nan")
    """The selection score of the best epoch (``select_on``; the val accuracy by default)."""
    steps: int = 0
    seconds: float = 0.0
    """Training time of the whole run, across resumes."""
    resumed_from_step: int = 0

    def selected_val_accuracy(self, select_best: bool) -> float | None:
        """Val accuracy of the weights kept (best epoch or last); None when no val split was read."""
        acc = self.best_val_accuracy if select_best else self.history[-1]["val_accuracy"]
        return None if math.isnan(acc) else acc


@dataclass(frozen=True)
class TrainRun:
    """Everything about one training run besides the model, the method, the budget and the data: its seed and
    device, where it keeps its resumable state, where it reports, and how it chooses the epoch it keeps.

    Args:
        store: where the resumable training state lives; ``None`` disables checkpointing.
        config_hash: identifies the config; a state saved under another hash is refused.
        log_metrics: callback(metrics, step) (the MLflow tracker, or nothing).
        desc: the run's name in logs and progress bars (``pretrain``, ``finetune``, ``baseline``).
        run_id: the MLflow run of this training, saved with the state so a resume continues it.
        dist: this process's place in a data-parallel job (DDP); rank 0 alone saves and logs.
        epoch_end: callback(model, epoch) -> extra per-epoch metrics (e.g. a label-free selection criterion),
            logged and kept in the history with the others.
        select_on: the per-epoch metric the best epoch maximises (``val_accuracy``, or one ``epoch_end`` adds).
        balanced_streams: streams drawn class-balanced (:class:`~transferops.data.batches.BalancedBatchStream`),
            e.g. ``("labeled",)`` under ``finetune.class_balance: sampler``.
    """

    seed: int
    device: torch.device
    desc: str = "train"
    store: StateStore | None = None
    config_hash: str = ""
    log_metrics: Callable[[dict[str, float], int], None] | None = None
    run_id: str | None = None
    dist: Distributed = SINGLE
    epoch_end: Callable[[nn.Module, int], dict[str, float]] | None = None
    select_on: str = "val_accuracy"
    balanced_streams: tuple[str, ...] = ()


FAULT_ENV = "TRANSFEROPS_FAULT_KILL_AT"
"""Fault injection for preemption tests: ``<desc>:<step>`` (e.g. ``finetune:9``) SIGKILLs the process after that
step, but only in a run that started from scratch: the retry that resumes it runs to the end."""


def _inject_fault(trainer: Trainer) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    if not spec or trainer.result.resumed_from_step:
        return
    desc, _, step = spec.rpartition(":")
    if desc == trainer.desc and step.isdigit() and trainer.step == int(step):
        log.warning("%s: %s=%s: killing this process at step %d (fault injection)", desc, FAULT_ENV, spec, trainer.step)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


def _plain(state: dict[str, Any]) -> dict[str, Any]:
    """A state dict without the ``module.`` level DDP adds (checkpoints look the same at any world size)."""
    return {k.replace("module.", "") if ".module." in f".{k}" else k: v for k, v in state.items()}


def load_resume_state(store: StateStore | None, config_hash: str, restart: bool) -> dict[str, Any] | None:
    """The saved state a run resumes from, if any; a state of another config is refused (or discarded with
    ``restart``). Read before the run starts so the stage can continue the MLflow run the state names."""
    if store is None:
        return None
    if restart:
        store.delete()
        return None
    state = store.load()
    if state is not None and state.get("config_hash") != config_hash:
        raise CheckpointError(
            f"{store.location}: training state belongs to another config (hash {state.get('config_hash')} != "
            f"{config_hash}); delete it or pass --restart"
        )
    return state


class Trainer:
    """One training run of ``model`` with ``strategy``; see the module docstring.

    ``model`` is usually a :class:`TransferNet`; a strategy may train a smaller module instead (a linear
    probe trains just the head on cached features). ``streams`` are the batch streams the strategy asks for
    (``strategy.streams``); ``val`` the split for model selection (may be empty: the last epoch is kept).
    """

    def __init__(
        self,
        model: nn.Module,
        strategy: Strategy,
        cfg: TrainConfig,
        streams: dict[str, BatchStream],
        val: Split,
        run: TrainRun,
    ) -> None:
        device, dist = run.device, run.dist
        missing = [s for s in strategy.streams if s not in streams]
        if missing:
            raise TrainingError(f"method {strategy.name!r} needs data splits {missing} that are empty or absent")
        self.active = list(strategy.streams) + [s for s in strategy.optional_streams if s in streams]
        self.dist = dist
        if dist.enabled and cfg.sync_bn:
            model = distributed.sync_batchnorm(model, device)
        self.model, self.strategy, self.cfg = model.to(device), strategy, cfg
        self.extra = strategy.modules().to(device)
        self._wrapped: list[tuple[nn.Module, str]] = []
        if cfg.channels_last and device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        if cfg.compile and hasattr(self.model, "backbone"):
            self.model.backbone.compile()  # in place: state-dict keys stay the same
        self.streams, self.val, self.device, self.seed = streams, val, device, run.seed
        self.store, self.config_hash, self.run_id = run.store, run.config_hash, run.run_id
        self.log_metrics = (run.log_metrics if dist.is_main else None) or (lambda metrics, step: None)
        self.desc = run.desc
        self.epoch_end, self.select_on = run.epoch_end, run.select_on
        self.steps_per_epoch = cfg.steps_per_epoch or streams[strategy.streams[0]].steps_per_pass
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.optimizer, self.scheduler = build_optimizer(cfg, strategy.param_groups(model, cfg.lr), self.total_steps)
        fp16 = cfg.precision == "fp16" and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        self.input_size = getattr(model, "input_size", 0)
        self.step = 0
        self.result = FitResult()
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0
        self.running: dict[str, float] = {}
        self.sync_every = 1 if device.type == "cpu" else cfg.log_every_steps

    # ---------------------------------------------------------------------------------- state
    def _state(self) -> dict[str, Any]:
        return {
            "config_hash": self.config_hash,
            "step": self.step,
            "model": _plain(self.model.state_dict()),
            "extra": _plain(self.extra.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "best_state": self.best_state,
            "best_epoch": self.result.best_epoch,
            "best_val_accuracy": self.result.best_val_accuracy,
            "best_score": self.result.best_score,
            "bad_epochs": self.bad_epochs,
            "history": self.result.history,
            "timing": self.result.timing,
            "running": self.running,
            "seconds": self.result.seconds + (time.perf_counter() - self._t0 if hasattr(self, "_t0") else 0.0),
            "tracking_run_id": self.run_id,
        }

    def save_state(self) -> None:
        if self.store is not None and self.dist.is_main:
            self.store.save(self._state())

    def resume(self, state: dict[str, Any] | None) -> bool:
        """Continue from a state :func:`load_resume_state` returned (None: start afresh)."""
        if state is None:
            return False
        self.model.load_state_dict(state["model"])
        self.extra.load_state_dict(state["extra"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.step = state["step"]
        self.best_state = state["best_state"]
        self.result.best_epoch = state["best_epoch"]
        self.result.best_val_accuracy = state["best_val_accuracy"]
        self.result.best_score = state.get("best_score", state["best_val_accuracy"])
        self.bad_epochs = state["bad_epochs"]
        self.result.history = state["history"]
        self.result.timing = state.get("timing", [])
        self.running = state["running"]
        self.result.seconds = float(state.get("seconds", 0.0))
        self.result.resumed_from_step = self.step
        where = self.store.location if self.store is not None else "state"
        log.info("%s: resumed from %s at step %d/%d", self.desc, where, self.step, self.total_steps)
        return True

    # ---------------------------------------------------------------------------------- loop
    def _fetch(self, step: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {name: self.streams[name].batch(step) for name in self.active}

    def _to_device(self, raw: dict[str, tuple[torch.Tensor, torch.Tensor]]):
        out = {}
        for i, name in enumerate(self.active):
            x, y = raw[name]
            x = to_float(x.to(self.device, non_blocking=True))
            if x.ndim == 4:
                total = self.streams[name].batch_size  # the global batch: this rank holds rows rank::world
                rows = torch.arange(self.dist.rank, total, self.dist.world) if self.dist.enabled else None
                x = train_transform(x, self.cfg.augment, self.seed + i, self.step, self.input_size, rows, total)
                if self.cfg.channels_last and self.device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
            out[name] = (x, y.to(self.device, non_blocking=True))
        return out

    def _diverged(self, loss: torch.Tensor, since: int) -> TrainingError:
        where = f"; last good state kept at {self.store.location}" if self.store is not None else ""
        steps = f"step {self.step}" if since == self.step else f"steps {since}-{self.step}"
        return TrainingError(f"{self.desc}: loss is {float(loss)} at {steps} (diverged){where}")

    def _distribute(self) -> None:
        """Wrap what trains in DDP for one epoch (re-wrapped each epoch: a strategy may unfreeze layers)."""
        if not self.dist.enabled:
            return
        owners = [(self.model, n) for n in ("backbone", "head") if hasattr(self.model, n)] or [(self, "model")]
        owners += [(self.extra, k) for k in self.extra]
        for owner, name in owners:
            wrapped = distributed.wrap(
                getattr(owner, name) if not isinstance(owner, nn.ModuleDict) else owner[name], self.device
            )
            if isinstance(owner, nn.ModuleDict):
                owner[name] = wrapped
            else:
                setattr(owner, name, wrapped)
            self._wrapped.append((owner, name))

    def _undistribute(self) -> None:
        for owner, name in self._wrapped:
            if isinstance(owner, nn.ModuleDict):
                owner[name] = distributed.unwrap(owner[name])
            else:
                setattr(owner, name, distributed.unwrap(getattr(owner, name)))
        self._wrapped = []

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        self.strategy.on_epoch_start(self.model, epoch)
        self._distribute()
        try:
            return self._epoch(epoch)
        finally:
            self._undistribute()

    def _epoch(self, epoch: int) -> dict[str, float]:
        self.strategy.train_mode(self.model)
        start = self.step - epoch * self.steps_per_epoch
        first_step = self.step
        bar = tqdm(
            range(start, self.steps_per_epoch),
            desc=f"{self.desc} epoch {epoch + 1}/{self.cfg.epochs}",
            disable=not sys.stderr.isatty(),
            leave=False,
        )
        sums: dict[str, torch.Tensor] = {}
        window_start = self.step
        images = 0
        pin = self.device.type == "cuda"
        with Prefetcher(self._fetch, self.step, first_step + len(bar), self.cfg.prefetch, pin) as prefetch:
            for _ in bar:
                batches = self._to_device(prefetch.get(self.step))
                images += sum(len(y) for _, y in batches.values())
                with autocast(self.device, self.cfg.precision):
                    loss, parts = self.strategy.loss(self.model, batches, self.step / self.total_steps)
                if self.sync_every == 1 and not torch.isfinite(loss):
                    raise self._diverged(loss, self.step)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                self.step += 1
                for k, v in {"loss": loss, **parts}.items():
                    v = v.detach().float() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
                    sums[k] = sums[k] + v if k in sums else v.clone()
                if self.step % self.sync_every == 0 or self.step - first_step == len(bar):
                    self._flush(sums, window_start, bar)
                    sums, window_start = {}, self.step
                every = self.cfg.checkpoint_every_steps
                if every and self.step % every == 0 and self.step % self.steps_per_epoch:
                    self.save_state()
                _inject_fault(self)
        n = max(1.0, self.running.pop("n", 1.0))
        metrics = {f"train_{k}": v / n for k, v in self.running.items()}
        self.running = {}
        self._epoch_images = images
        return metrics

    def _flush(self, sums: dict[str, torch.Tensor], window_start: int, bar) -> None:
        """Read the window's summed loss terms from the device (one sync) into the running means."""
        if not sums:
            return
        values = {k: float(v) for k, v in sums.items()}
        if not math.isfinite(values["loss"]):
            raise self._diverged(sums["loss"], window_start)
        steps = self.step - window_start
        for k, v in values.items():
            self.running[k] = self.running.get(k, 0.0) + v
        self.running["n"] = self.running.get("n", 0.0) + steps
        bar.set_postfix(loss=f"{values['loss'] / max(1, steps):.3f}")

    def fit(self) -> FitResult:
        """Train for the configured budget (continuing a resumed state) and keep the best weights."""
        self._t0 = time.perf_counter()
        first_epoch = self.step // self.steps_per_epoch
        for epoch in range(first_epoch, self.cfg.epochs):
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            t_epoch = time.perf_counter()
            metrics = self.train_one_epoch(epoch)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            train_seconds = time.perf_counter() - t_epoch
            metrics["val_accuracy"] = accuracy(self.model, self.val, self.device, self.cfg.precision)
            if self.epoch_end is not None:
                metrics.update(self.epoch_end(self.model, epoch))
            metrics["lr"] = self.optimizer.param_groups[0]["lr"]
            timing = {
                "epoch": epoch + 1,
                "seconds": train_seconds,
                "throughput_img_s": self._epoch_images / train_seconds,
            }
            if self.device.type == "cuda":
                timing["gpu_memory_peak_gb"] = torch.cuda.max_memory_allocated(self.device) / 1e9
            self.result.history.append({"epoch": epoch + 1, **metrics})
            self.result.timing.append(timing)
            self.log_metrics({**metrics, **{k: v for k, v in timing.items() if k != "epoch"}}, epoch + 1)
            log.info(
                "%s epoch %d/%d  %s  (%.0f img/s)",
                self.desc,
                epoch + 1,
                self.cfg.epochs,
                "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()),
                timing["throughput_img_s"],
            )
            stop = self._select(epoch, metrics)
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
        self.result.seconds += time.perf_counter() - self._t0
        return self.result

    def _select(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Keep this epoch's weights when its val score is the best so far or equals it, and say whether to
        stop early. Ties go to the later epoch: with a few val images per class (5 by default, 2 on a long-tailed
        target) many epochs tie, and the later one has trained more steps at a lower learning rate; keeping the
        first kept an epoch-1 model at 83.6 % balanced accuracy on one seed of the 10:1 imbalanced benchmark,
        where the later tie gave 93.4 % (reports/methods-notes.md)."""
        score = metrics.get(self.select_on, float("nan"))
        if math.isnan(score):
            return False
        best = self.result.best_score
        improved = math.isnan(best) or score > best
        if improved or score == best:  # a tie keeps the later epoch (see below)
            self.result.best_epoch, self.result.best_score = epoch + 1, score
            self.result.best_val_accuracy = metrics["val_accuracy"]
            self.best_state = copy.deepcopy(_plain(self.model.state_dict())) if self.cfg.select_best else None
        if improved:
            self.bad_epochs = 0
            return False
        self.bad_epochs += 1  # a tie is no improvement: a plateau still stops early
        patience = self.cfg.early_stopping_patience
        return bool(patience) and self.bad_epochs >= patience


def train(
    model: nn.Module,
    strategy: Strategy,
    cfg: TrainConfig,
    data: dict[str, Split],
    val: Split,
    run: TrainRun,
    resume_from: dict[str, Any] | None = None,
) -> FitResult:
    """Build batch streams for the splits the strategy needs, resume (from ``resume_from``, a state
    :func:`load_resume_state` returned) or start, and fit; the state is deleted once training finished.

    ``data`` maps stream names (``labeled``, ``source``, ``unlabeled``) to splits; empty splits are left out
    so a method that needs one fails with a message naming it.
    """
    dist = run.dist
    kinds = {name: BalancedBatchStream for name in run.balanced_streams}
    streams = {
        name: kinds.get(name, BatchStream)(split, cfg.batch_size, run.seed, stream=i, rank=dist.rank, world=dist.world)
        for i, (name, split) in enumerate(data.items())
        if len(split) > 0
    }
    trainer = Trainer(model, strategy, cfg, streams, val, run)
    trainer.resume(resume_from)
    result = trainer.fit()
    distributed.barrier(dist)  # every rank has finished before the state that could resume them goes
    if run.store is not None and dist.is_main:  # finished: the next run starts afresh
        run.store.delete()
    return result
