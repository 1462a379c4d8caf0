"""Unsupervised domain adaptation: labelled source + unlabelled target (+ labelled target when k > 0).

Every method here shares the same step: one forward pass over a source batch and an unlabelled target batch,
cross-entropy on the source labels (and on labelled target images when there are any), plus
``trade_off`` times a term that pulls the two domains' features together. Only that term differs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from transferops.config import AdaptationConfig, CoralConfig, DANNConfig, MCCConfig, MMDConfig
from transferops.errors import ConfigError
from transferops.models import TransferNet
from transferops.transfer.base import Batch, Strategy, TransferContext, register
from transferops.transfer.losses import DomainDiscriminator, coral, grad_reverse, grl_coefficient, mcc_loss, mk_mmd


class Adaptation(Strategy):
    """Shared step of the domain adaptation methods; subclasses define :meth:`align`."""

    cfg: AdaptationConfig
    streams = ("source", "unlabeled")
    optional_streams = ("labeled",)
    uses_target_labels = False

    def prepare(self, model: TransferNet, ctx: TransferContext) -> None:
        if not ctx.same_classes:
            raise ConfigError(
                f"finetune.method {self.name}: source and target classes differ; domain adaptation trains the "
                "target head on source labels (map the classes with ingest.class_map)"
            )
        super().prepare(model, ctx)

    def align(
        self, fs: torch.Tensor, ft: torch.Tensor, ls: torch.Tensor, lt: torch.Tensor, progress: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def loss(self, model: TransferNet, batches: dict[str, Batch], progress: float):
        (xs, ys), (xt, _) = batches["source"], batches["unlabeled"]
        parts = [xs, xt]
        if "labeled" in batches:
            parts.append(batches["labeled"][0])
        feats = model.features(torch.cat(parts))
        logits = model.head(model.dropout(feats))
        ns, nt = len(xs), len(xt)
        ce = self.ce(logits[:ns], ys)
        term, logs = self.align(feats[:ns], feats[ns : ns + nt], logits[:ns], logits[ns : ns + nt], progress)
        loss = ce + self.cfg.trade_off * term
        logs = {"ce_source": ce.detach(), **logs}
        if "labeled" in batches:
            ce_t = self.ce(logits[ns + nt :], batches["labeled"][1])
            loss = loss + self.cfg.target_weight * ce_t
            logs["ce_target"] = ce_t.detach()
        return loss, logs


@register("dann")
class DANN(Adaptation):
    """Domain-adversarial training: a discriminator tells source from target features through a gradient
    reversal layer, whose coefficient follows 2 / (1 + exp(-gamma p)) - 1."""

    cfg: DANNConfig

    def prepare(self, model: TransferNet, ctx: TransferContext) -> None:
        super().prepare(model, ctx)
        self.extra["discriminator"] = DomainDiscriminator(model.feature_dim, self.cfg.hidden).to(ctx.device)

    def param_groups(self, model: TransferNet, lr: float):
        return [
            {"params": [p for p in model.parameters() if p.requires_grad], "lr": lr},
            {"params": list(self.extra.parameters()), "lr": lr * self.cfg.discriminator_lr_mult},
        ]

    def align(self, fs, ft, ls, lt, progress):
        coeff = grl_coefficient(progress, self.cfg.schedule_gamma)
        d = self.extra["discriminator"](grad_reverse(torch.cat([fs, ft]), coeff)).squeeze(1)
        domain = torch.cat([torch.ones(len(fs)), torch.zeros(len(ft))]).to(d.device)
        loss = F.binary_cross_entropy_with_logits(d, domain)
        acc = ((d > 0).float() == domain).float().mean().detach()
        return loss, {"domain_loss": loss.detach(), "domain_acc": acc, "grl_coeff": coeff}


@register("mmd")
class MMD(Adaptation):
    """DAN: multi-kernel MMD between source and target features."""

    cfg: MMDConfig

    def align(self, fs, ft, ls, lt, progress):
        m = mk_mmd(fs, ft, self.cfg.kernel_multipliers)
        return m, {"mmd": m.detach()}


@register("coral")
class Coral(Adaptation):
    """Deep CORAL: align the second-order statistics (covariances) of source and target features."""

    cfg: CoralConfig

    def align(self, fs, ft, ls, lt, progress):
        c = coral(fs, ft)
        return c, {"coral": c.detach()}


@register("mcc")
class MCC(Adaptation):
    """Minimum class confusion on the unlabelled target predictions."""

    cfg: MCCConfig

    def align(self, fs, ft, ls, lt, progress):
        m = mcc_loss(lt, self.cfg.temperature)
        return m, {"mcc": m.detach()}
