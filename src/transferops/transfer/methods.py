"""The supervised transfer methods: feature extraction and (partial) fine-tuning."""

from __future__ import annotations

from typing import Any

from transferops.config import FinetuneMethodConfig, LinearProbeConfig
from transferops.models import TransferNet
from transferops.transfer.base import Strategy, register


@register("linear_probe")
class LinearProbe(Strategy):
    """Feature extraction: the source backbone is frozen (weights and BatchNorm statistics), a new head trains."""

    cfg: LinearProbeConfig

    def prepare(self, model: TransferNet, num_classes: int, same_classes: bool) -> None:
        super().prepare(model, num_classes, same_classes)
        model.backbone.requires_grad_(False)

    def train_mode(self, model: TransferNet) -> None:
        super().train_mode(model)
        model.backbone.eval()


@register("finetune")
class Finetune(Strategy):
    """Fine-tune the source model: optionally freeze the first stages, backbone at ``lr * backbone_lr_mult``."""

    cfg: FinetuneMethodConfig

    def prepare(self, model: TransferNet, num_classes: int, same_classes: bool) -> None:
        super().prepare(model, num_classes, same_classes)
        self._frozen = [m for stage in model.stages()[: self.cfg.freeze_stages] for m in stage]
        for module in self._frozen:
            module.requires_grad_(False)

    def train_mode(self, model: TransferNet) -> None:
        super().train_mode(model)
        for module in self._frozen:
            module.eval()

    def param_groups(self, model: TransferNet, lr: float) -> list[dict[str, Any]]:
        backbone = [p for p in model.backbone.parameters() if p.requires_grad]
        head = [p for p in model.head.parameters() if p.requires_grad]
        groups = [{"params": head, "lr": lr}]
        if backbone and self.cfg.backbone_lr_mult > 0:
            groups.append({"params": backbone, "lr": lr * self.cfg.backbone_lr_mult})
        elif backbone:  # multiplier 0: the backbone does not train at all
            for p in backbone:
                p.requires_grad_(False)
        return groups
