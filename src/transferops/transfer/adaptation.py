"""Unsupervised domain adaptation: labelled source + unlabelled target (+ labelled target when k > 0).

Every method here shares the same step: a forward pass over a source batch and one over the target batch
(unlabelled and labelled target images together), never one over both domains, so that BatchNorm normalises
each domain with its own statistics and the running statistics the model keeps are the target's
(:mod:`transferops.transfer.domains`); cross-entropy on the source labels (and on labelled target images when
there are any), plus ``trade_off`` times a term that pulls the two domains together. Only that term differs.
Every method logs the mean entropy of its target predictions (``target_entropy``) and the adversarial ones
their discriminator's accuracy (``domain_acc``): per epoch in MLflow, where a collapse shows as the entropy
falling towards 0, or the discriminator winning (accuracy near 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from transferops.config import AdaptationConfig, CDANConfig, CoralConfig, DANNConfig, MCCConfig, MMDConfig
from transferops.errors import ConfigError
from transferops.models import TransferNet
from transferops.transfer.base import Batch, Strategy, TransferContext, register
from transferops.transfer.domains import classify, labeled_target_term, source_features, target_pass
from transferops.transfer.losses import (
    DomainDiscriminator,
    coral,
    entropy,
    grad_reverse,
    grl_coefficient,
    mcc_loss,
    mean_entropy,
    mk_mmd,
)


class Adaptation(Strategy):
    """Shared step of the domain adaptation methods; subclasses define :meth:`align`."""

    cfg: AdaptationConfig
    streams = ("source", "unlabeled")
    optional_streams = ("labeled",)
    uses_target_labels = False
    uses_source_data = True

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
        xs, ys = batches["source"]
        fs = source_features(model, xs)
        ft, fl = target_pass(model, batches)
        ls, lt = classify(model, fs), classify(model, ft)
        ce = self.ce(ls, ys)
        term, logs = self.align(fs, ft, ls, lt, progress)
        loss = ce + self.cfg.trade_off * term
        logs = {"ce_source": ce.detach(), **logs, "target_entropy": mean_entropy(lt).detach()}
        ce_t = labeled_target_term(self.target_ce, model, fl, batches, logs)
        if ce_t is not None:
            loss = loss + self.cfg.target_weight * ce_t
        return loss, logs


@register("dann")
class DANN(Adaptation):
    """Domain-adversarial training: a discriminator tells source from target features through a gradient
    reversal layer, whose coefficient follows 2 / (1 + exp(-gamma p)) - 1."""

    cfg: DANNConfig

    def prepare(self, model: TransferNet, ctx: TransferContext) -> None:
        super().prepare(model, ctx)
        self.extra["discriminator"] = DomainDiscriminator(
            self.discriminator_input(model, ctx), self.cfg.hidden, self.cfg.discriminator_norm
        ).to(ctx.device)

    def discriminator_input(self, model: TransferNet, ctx: TransferContext) -> int:
        """Width of what the discriminator judges: here the backbone features."""
        return model.feature_dim

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


@register("cdan")
class CDAN(DANN):
    """Conditional adversarial adaptation (CDAN, Long et al. 2018): the discriminator sees the multilinear map
    f (x) g of the features f and the class probabilities g (detached), so it aligns the class-conditional
    distributions rather than the marginals; through the same gradient reversal schedule as DANN. With
    ``entropy_conditioning`` (CDAN+E) each example's domain loss is weighted by 1 + exp(-H(g)), normalised to
    mean 1: confident predictions, whose conditioning means something, count more. When features x classes
    exceed 4096 the map is a fixed random projection (f R_f) * (g R_g) / sqrt(d) instead."""

    cfg: CDANConfig
    FULL_MAP_LIMIT = 4096

    def discriminator_input(self, model: TransferNet, ctx: TransferContext) -> int:
        """Width of the multilinear map: features x classes, or the random map's width beyond the limit."""
        full = model.feature_dim * ctx.num_classes
        return full if full <= self.FULL_MAP_LIMIT else self.cfg.randomized_dim

    def prepare(self, model: TransferNet, ctx: TransferContext) -> None:
        super().prepare(model, ctx)
        if model.feature_dim * ctx.num_classes > self.FULL_MAP_LIMIT:
            g = torch.Generator().manual_seed(ctx.seed)
            self.extra["random_map"] = RandomMap(model.feature_dim, ctx.num_classes, self.cfg.randomized_dim, g).to(
                ctx.device
            )

    def align(self, fs, ft, ls, lt, progress):
        f = torch.cat([fs, ft])
        logits = torch.cat([ls, lt]).detach().float()
        g = F.softmax(logits, 1).to(f.dtype)
        if "random_map" in self.extra:
            h = self.extra["random_map"](f, g)
        else:
            h = torch.bmm(g.unsqueeze(2), f.unsqueeze(1)).flatten(1)
        coeff = grl_coefficient(progress, self.cfg.schedule_gamma)
        d = self.extra["discriminator"](grad_reverse(h, coeff)).squeeze(1)
        domain = torch.cat([torch.ones(len(fs)), torch.zeros(len(ft))]).to(d.device)
        weight = None
        if self.cfg.entropy_conditioning:
            w = 1.0 + torch.exp(-entropy(logits))
            weight = (w / w.sum() * len(w)).detach()
        loss = F.binary_cross_entropy_with_logits(d.float(), domain, weight=weight)
        acc = ((d > 0).float() == domain).float().mean().detach()
        return loss, {"domain_loss": loss.detach(), "domain_acc": acc, "grl_coeff": coeff}


class RandomMap(nn.Module):
    """CDAN's randomized multilinear map: (f R_f) * (g R_g) / sqrt(dim), R fixed Gaussian (saved as buffers)."""

    def __init__(self, feature_dim: int, num_classes: int, dim: int, generator: torch.Generator) -> None:
        super().__init__()
        self.register_buffer("rf", torch.randn(feature_dim, dim, generator=generator))
        self.register_buffer("rg", torch.randn(num_classes, dim, generator=generator))
        self.dim = dim

    def forward(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return (f @ self.rf) * (g @ self.rg) / self.dim**0.5
