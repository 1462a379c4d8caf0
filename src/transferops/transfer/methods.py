"""Supervised transfer methods: feature extraction, (partial) fine-tuning, L2-SP."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from transferops.config import FinetuneMethodConfig, L2SPConfig, LinearProbeConfig
from transferops.data.shards import Split
from transferops.models import TransferNet
from transferops.models.inference import predict_features
from transferops.transfer.base import Batch, Strategy, TransferContext, register


@register("linear_probe")
class LinearProbe(Strategy):
    """Feature extraction: the source backbone is frozen (weights and BatchNorm statistics), a new head trains.

    With ``cache_features`` the backbone runs once over the data and the head trains on the cached features:
    the frozen backbone never runs per step, which is what makes feature extraction cheap.
    """

    cfg: LinearProbeConfig

    def prepare(self, model: TransferNet, ctx: TransferContext) -> None:
        super().prepare(model, ctx)
        model.backbone.requires_grad_(False)

    def train_mode(self, model: nn.Module) -> None:
        super().train_mode(model)
        if isinstance(model, TransferNet):
            model.backbone.eval()

    def feature_space(self, model: TransferNet, data: dict[str, Split], val: Split, device: torch.device):
        if not self.cfg.cache_features:
            return None

        def cached(split: Split) -> Split:
            return Split(predict_features(model, split, device=device), split.labels)

        return nn.Sequential(model.dropout, model.head), {k: cached(v) for k, v in data.items()}, cached(val)


def _stage_params(model: TransferNet) -> list[list[nn.Parameter]]:
    return [[p for m in stage for p in m.parameters()] for stage in model.stages()]


@register("full_finetune")
class Finetune(Strategy):
    """Fine-tune the source model: full or partial, with discriminative and layer-wise learning rates.

    The head trains at ``lr``; backbone stage i of n at ``lr * backbone_lr_mult * layer_decay^(n-1-i)``.
    The first ``freeze_stages`` stages never train; with ``unfreeze_every`` the backbone starts frozen and one
    more stage, from the top, is unfrozen every that many epochs (gradual unfreezing).
    """

    cfg: FinetuneMethodConfig

    def prepare(self, model: TransferNet, ctx: TransferContext) -> None:
        super().prepare(model, ctx)
        self._stages = model.stages()
        if self.cfg.backbone_lr_mult == 0:
            model.backbone.requires_grad_(False)
        self._apply_freezing(model, epoch=0)

    def _trainable(self, i: int, epoch: int) -> bool:
        n = len(self._stages)
        if i < self.cfg.freeze_stages or self.cfg.backbone_lr_mult == 0:
            return False
        if self.cfg.unfreeze_every:
            return i >= n - epoch // self.cfg.unfreeze_every
        return True

    def _apply_freezing(self, model: TransferNet, epoch: int) -> None:
        for i, stage in enumerate(self._stages):
            for m in stage:
                m.requires_grad_(self._trainable(i, epoch))

    def on_epoch_start(self, model: TransferNet, epoch: int) -> None:
        if self.cfg.unfreeze_every:
            self._apply_freezing(model, epoch)

    def train_mode(self, model: TransferNet) -> None:
        super().train_mode(model)
        for stage in self._stages:
            for m in stage:
                if not any(p.requires_grad for p in m.parameters()):
                    m.eval()  # frozen BatchNorm keeps its source statistics

    def param_groups(self, model: TransferNet, lr: float) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = [{"params": list(model.head.parameters()), "lr": lr}]
        if self.cfg.backbone_lr_mult == 0:
            return groups
        base = lr * self.cfg.backbone_lr_mult
        staged = _stage_params(model)
        n = len(staged)
        seen = set()
        for i, params in enumerate(staged):  # frozen ones stay in the optimiser so unfreezing needs no rebuild
            groups.append({"params": params, "lr": base * self.cfg.layer_decay ** (n - 1 - i)})
            seen.update(id(p) for p in params)
        rest = [p for p in model.backbone.parameters() if id(p) not in seen]
        if rest:
            groups.append({"params": rest, "lr": base})
        return [g for g in groups if g["params"]]


@register("l2sp")
class L2SP(Strategy):
    """Fine-tuning with L2-SP: CE + alpha/2 ||w_shared - w_shared^0||^2 + beta/2 ||w_new||^2.

    Shared weights are those that came from the source (the backbone, and the head when it is kept); new
    weights are a freshly initialised head. Plain weight decay is off: the penalty replaces it (pulling towards
    zero would fight the pull towards the source weights).
    """

    cfg: L2SPConfig

    def prepare(self, model: TransferNet, ctx: TransferContext) -> None:
        head_before = model.head
        super().prepare(model, ctx)
        kept_head = model.head is head_before
        self._shared = [
            (p, p.detach().clone()) for n, p in model.named_parameters() if not n.startswith("head.") or kept_head
        ]
        self._new = [] if kept_head else list(model.head.parameters())

    def penalty(self) -> tuple[torch.Tensor, torch.Tensor]:
        sp = sum(((p - p0.to(p.device)) ** 2).sum() for p, p0 in self._shared)
        new = sum((p**2).sum() for p in self._new) if self._new else torch.zeros(())
        return 0.5 * self.cfg.alpha * sp, 0.5 * self.cfg.beta * new

    def param_groups(self, model: TransferNet, lr: float) -> list[dict[str, Any]]:
        head_ids = {id(p) for p in model.head.parameters()}
        backbone = [p for p in model.parameters() if id(p) not in head_ids and p.requires_grad]
        return [
            {"params": list(model.head.parameters()), "lr": lr, "weight_decay": 0.0},
            {"params": backbone, "lr": lr * self.cfg.backbone_lr_mult, "weight_decay": 0.0},
        ]

    def loss(self, model: TransferNet, batches: dict[str, Batch], progress: float):
        x, y = batches["labeled"]
        ce = self.target_ce(model(x), y)
        sp, new = self.penalty()
        return ce + sp + new, {"ce": ce.detach(), "l2sp": sp.detach(), "l2_new": torch.as_tensor(new).detach()}
