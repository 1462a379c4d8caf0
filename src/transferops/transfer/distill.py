"""Methods with a second source of supervision: a teacher (KD) or the source labels (joint training)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from transferops.config import JointConfig, KDConfig
from transferops.errors import ConfigError
from transferops.models import TransferNet
from transferops.transfer.base import Batch, Strategy, TransferContext, register
from transferops.transfer.domains import source_features, target_features
from transferops.transfer.losses import kd_loss


@register("kd")
class KnowledgeDistillation(Strategy):
    """CE on labelled target + alpha * T^2 * KL(teacher || student) on labelled (and unlabelled) target images.

    The teacher is the source model (needs the target's classes) or the checkpoint ``kd.teacher`` (e.g. a big
    model already fine-tuned on the target); the student starts from the source model. The teacher is frozen
    and never saved with the student. Labelled and unlabelled target images share one forward pass: they are
    one domain, so BatchNorm mixes nothing (the teacher runs in eval mode).
    """

    cfg: KDConfig

    def __init__(self, cfg: KDConfig, label_smoothing: float = 0.0) -> None:
        super().__init__(cfg, label_smoothing)
        self.optional_streams = ("unlabeled",) if cfg.distill_unlabeled else ()

    def prepare(self, model: TransferNet, ctx: TransferContext) -> None:
        from transferops.models.io import load_model

        path = Path(self.cfg.teacher) if self.cfg.teacher else ctx.source_model
        if path is None:
            raise ConfigError("finetune.kd.teacher: no teacher checkpoint (and no source model) to distil from")
        teacher, _ = load_model(path)
        if teacher.num_classes != ctx.num_classes or (not self.cfg.teacher and not ctx.same_classes):
            raise ConfigError(
                f"finetune.kd.teacher: teacher {path} predicts {teacher.num_classes} classes that are not the "
                f"target's {ctx.num_classes}; name a teacher trained on the target classes"
            )
        self.teacher = teacher.to(ctx.device).eval().requires_grad_(False)
        super().prepare(model, ctx)

    def loss(self, model: TransferNet, batches: dict[str, Batch], progress: float):
        x, y = batches["labeled"]
        xs = [x] + ([batches["unlabeled"][0]] if "unlabeled" in batches else [])
        logits = model(torch.cat(xs))
        with torch.no_grad():
            teacher = self.teacher(torch.cat(xs))
        ce = self.target_ce(logits[: len(y)], y)
        kd = kd_loss(logits, teacher, self.cfg.temperature)
        return ce + self.cfg.alpha * kd, {"ce": ce.detach(), "kd": kd.detach()}


@register("joint")
class Joint(Strategy):
    """Optimisation-based transfer: one model trained on alpha * L_source + (1 - alpha) * L_target.

    When the class sets differ, the source keeps its own head (an extra module) on the shared backbone. The two
    domains go through the backbone in separate passes (:mod:`transferops.transfer.domains`).
    """

    cfg: JointConfig
    streams = ("labeled", "source")
    uses_source_data = True

    def prepare(self, model: TransferNet, ctx: TransferContext) -> None:
        if not ctx.same_classes:
            self.extra["source_head"] = copy.deepcopy(model.head)
        super().prepare(model, ctx)

    def loss(self, model: TransferNet, batches: dict[str, Batch], progress: float):
        (xt, yt), (xs, ys) = batches["labeled"], batches["source"]
        fs = model.dropout(source_features(model, xs))  # one pass per domain: BatchNorm never mixes them
        (ft,) = target_features(model, xt)
        head_s = self.extra["source_head"] if "source_head" in self.extra else model.head
        lt = self.target_ce(model.head(model.dropout(ft)), yt)
        ls = self.ce(head_s(fs), ys)
        a = self.cfg.alpha
        return a * ls + (1 - a) * lt, {"ce_target": lt.detach(), "ce_source": ls.detach()}
