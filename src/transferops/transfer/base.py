"""The transfer-method interface and its registry.

A transfer method is three decisions: how the source model is prepared (head swap, frozen parts, extra
modules), which parameters train at what learning rate, and what the loss is (cross-entropy plus any extra
terms). :class:`Strategy` holds exactly those three hooks; the training loop in
:mod:`transferops.training.loop` knows nothing about any particular method. A new method is a subclass
decorated with :func:`register` and a typed sub-section in ``finetune`` (see :mod:`transferops.config`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from transferops.config import MethodConfig
from transferops.errors import ConfigError
from transferops.models import TransferNet

Batch = tuple[torch.Tensor, torch.Tensor]


class Strategy:
    """Plain supervised training of every parameter on the ``labeled`` stream.

    This is what pretrain and the from-scratch baseline use; transfer methods subclass it.
    """

    name: ClassVar[str] = "supervised"
    streams: ClassVar[tuple[str, ...]] = ("labeled",)
    """Batch streams the loss needs each step: ``labeled`` (the domain being trained), and for domain
    adaptation methods ``source`` (labelled source) and ``unlabeled`` (unlabelled target)."""

    def __init__(self, cfg: MethodConfig | None = None, label_smoothing: float = 0.0) -> None:
        self.cfg = cfg or MethodConfig()
        self.label_smoothing = label_smoothing

    # -- 1. preparation
    def prepare(self, model: TransferNet, num_classes: int, same_classes: bool) -> None:
        """Adapt the source model to the target task: by default keep the head when the classes match."""
        if self.cfg.reinit_head or not same_classes or model.num_classes != num_classes:
            model.reset_head(num_classes)

    def modules(self) -> nn.ModuleDict:
        """Extra trainable modules (e.g. a domain discriminator); saved and restored with the model."""
        return nn.ModuleDict()

    def train_mode(self, model: TransferNet) -> None:
        """Put modules in train mode (methods with a frozen backbone keep its BatchNorm statistics)."""
        model.train()
        self.modules().train()

    # -- 2. what trains, at what learning rate
    def param_groups(self, model: TransferNet, lr: float) -> list[dict[str, Any]]:
        params = [p for p in model.parameters() if p.requires_grad]
        extra = [p for p in self.modules().parameters() if p.requires_grad]
        return [g for g in ({"params": params, "lr": lr}, {"params": extra, "lr": lr}) if g["params"]]

    # -- 3. the loss
    def loss(
        self, model: TransferNet, batches: dict[str, Batch], progress: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss for one step; ``progress`` runs from 0 to 1 over the whole run (for schedules)."""
        x, y = batches["labeled"]
        ce = F.cross_entropy(model(x), y, label_smoothing=self.label_smoothing)
        return ce, {"ce": ce.item()}


STRATEGIES: dict[str, type[Strategy]] = {}


def register(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator: make a strategy selectable as ``finetune.method: <name>``."""

    def deco(cls: type[Strategy]) -> type[Strategy]:
        if name in STRATEGIES:
            raise ValueError(f"transfer method {name!r} registered twice")
        cls.name = name
        STRATEGIES[name] = cls
        return cls

    return deco


def get_strategy(name: str, cfg: MethodConfig, label_smoothing: float = 0.0) -> Strategy:
    """Instantiate the strategy registered under ``name`` with its typed settings."""
    if name not in STRATEGIES:
        raise ConfigError(f"finetune.method: unknown method {name!r} (expected one of {', '.join(sorted(STRATEGIES))})")
    return STRATEGIES[name](cfg, label_smoothing)
