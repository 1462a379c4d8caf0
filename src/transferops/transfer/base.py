"""The transfer-method interface and its registry.

A transfer method is three decisions: how the source model is prepared (head swap, frozen parts, extra
modules such as a domain discriminator or a teacher), which parameters train at what learning rate, and what
the loss is (cross-entropy plus any extra terms). :class:`Strategy` holds exactly those hooks; the training
loop in :mod:`transferops.training.loop` knows nothing about any particular method. A new method is a
subclass decorated with :func:`register` plus a typed sub-section of the same name in ``finetune`` (see
:mod:`transferops.config`); a test checks the two registries match.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from transferops.config import MethodConfig
from transferops.data.shards import Split
from transferops.errors import ConfigError
from transferops.models import TransferNet

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class TransferContext:
    """What a strategy may need to know when it prepares the model."""

    num_classes: int
    same_classes: bool
    """The target's class names equal the source's, in the same order (the source head is meaningful)."""
    source_model: Path | None = None
    device: torch.device = torch.device("cpu")
    seed: int = 0
    """The run's seed (for a strategy's own random draws, e.g. FixMatch's strong augmentation)."""


class Strategy:
    """Plain supervised training of every parameter on the ``labeled`` stream.

    This is what pretrain and the from-scratch baseline use; transfer methods subclass it.
    """

    name: ClassVar[str] = "supervised"
    streams: ClassVar[tuple[str, ...]] = ("labeled",)
    """Batch streams the loss needs every step: ``labeled`` (labelled target, or the source in pretrain),
    ``source`` (labelled source), ``unlabeled`` (unlabelled target). The first one sets the epoch length."""
    optional_streams: ClassVar[tuple[str, ...]] = ()
    """Streams used when their split is not empty (e.g. labelled target for domain adaptation with k > 0)."""
    uses_target_labels: ClassVar[bool] = True
    uses_source_data: ClassVar[bool] = False
    """Whether the finetune stage reads the source *dataset* for this method (a ``source`` stream). False:
    the method needs only the source *model*, so the source data need not travel with it (e.g. ``shot``,
    source-free adaptation; a Kubeflow finetune task then takes no source dataset input)."""

    def __init__(self, cfg: MethodConfig | None = None, label_smoothing: float = 0.0) -> None:
        self.cfg = cfg or MethodConfig()
        self.label_smoothing = label_smoothing
        self.extra = nn.ModuleDict()
        self.class_weight: torch.Tensor | None = None
        """Per-class weights of the labelled *target* cross-entropy (``finetune.class_balance: weighted``);
        ``None``: unweighted. Set by the finetune stage once it knows the labelled split's class counts."""

    # -- 1. preparation
    def prepare(self, model: TransferNet, ctx: TransferContext) -> None:
        """Adapt the source model to the target task: by default keep the head when the classes match."""
        if self.cfg.reinit_head or not ctx.same_classes or model.num_classes != ctx.num_classes:
            model.reset_head(ctx.num_classes)

    def modules(self) -> nn.ModuleDict:
        """Extra trainable modules (e.g. a domain discriminator); saved and restored with the training state."""
        return self.extra

    def train_mode(self, model: TransferNet) -> None:
        """Put modules in train mode (methods with a frozen backbone keep its BatchNorm statistics)."""
        model.train()
        self.extra.train()

    def attach(self, data: dict[str, Split], device: torch.device) -> None:
        """Called once with the splits behind the batch streams, before training, for methods that read a
        whole split outside the batches (e.g. SHOT's class centroids over the unlabelled target)."""

    def on_epoch_start(self, model: TransferNet, epoch: int) -> None:
        """Called before every epoch (e.g. gradual unfreezing, pseudo-labels refreshed)."""

    def feature_space(self, model: TransferNet, data: dict[str, Split], val: Split, device: torch.device):
        """Optionally move training into feature space: return (module to train, data, val) or None."""
        return None

    # -- 2. what trains, at what learning rate
    def param_groups(self, model: TransferNet, lr: float) -> list[dict[str, Any]]:
        params = [p for p in model.parameters() if p.requires_grad]
        extra = [p for p in self.extra.parameters() if p.requires_grad]
        return [g for g in ({"params": params, "lr": lr}, {"params": extra, "lr": lr}) if g["params"]]

    # -- 3. the loss
    def loss(
        self, model: TransferNet, batches: dict[str, Batch], progress: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss for one step and its logged parts (detached tensors: the loop reads them from the device once
        per logging window, not every step); ``progress`` runs from 0 to 1 over the whole run."""
        x, y = batches["labeled"]
        ce = self.target_ce(model(x), y)
        return ce, {"ce": ce.detach()}

    def ce(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Unweighted cross-entropy (source labels, pseudo-labels)."""
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)

    def target_ce(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy on labelled target images, weighted by :attr:`class_weight` when it is set (the
        weighted mean: ``sum_i w_{y_i} CE_i / sum_i w_{y_i}``, PyTorch's convention)."""
        weight = None if self.class_weight is None else self.class_weight.to(logits.device, logits.dtype)
        return F.cross_entropy(logits, y, weight=weight, label_smoothing=self.label_smoothing)


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
        known = ", ".join(sorted(STRATEGIES))
        raise ConfigError(f"finetune.method: unknown method {name!r} (expected one of {known})")
    return STRATEGIES[name](cfg, label_smoothing)
