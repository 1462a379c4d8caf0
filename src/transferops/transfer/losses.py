"""Loss terms of the transfer methods, as pure functions (each unit-tested against its definition)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.coeff * grad, None


def grad_reverse(x: torch.Tensor, coeff: float) -> torch.Tensor:
    """Identity forward; multiplies the gradient by ``-coeff`` backward (the GRL of DANN)."""
    return _GradReverse.apply(x, coeff)


def grl_coefficient(progress: float, gamma: float = 10.0) -> float:
    """DANN's schedule 2 / (1 + exp(-gamma p)) - 1: 0 at the start, towards 1 at the end."""
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over the batch."""
    t = temperature
    return (
        F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), reduction="batchmean", log_target=True)
        * t
        * t
    )


def mk_mmd(source: torch.Tensor, target: torch.Tensor, multipliers: list[float]) -> torch.Tensor:
    """Multi-kernel MMD^2 (biased estimate) with Gaussian kernels; bandwidths scale the mean squared distance."""
    x = torch.cat([source, target])
    d2 = torch.cdist(x, x).pow(2)
    base = d2.detach().sum() / max(1, x.shape[0] ** 2 - x.shape[0])
    k = sum(torch.exp(-d2 / (base * m + 1e-8)) for m in multipliers)
    n = source.shape[0]
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


def coral(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Deep CORAL: ||C_s - C_t||_F^2 / (4 d^2) between feature covariances."""
    d = source.shape[1]

    def cov(x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(0, keepdim=True)
        return x.T @ x / max(1, x.shape[0] - 1)

    return (cov(source) - cov(target)).pow(2).sum() / (4 * d * d)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-row entropy (nats) of softmax(logits)."""
    logp = F.log_softmax(logits.float(), 1)
    return -(logp.exp() * logp).sum(1)


def mean_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean prediction entropy of a batch (what collapses towards 0 when adaptation over-confidently fails)."""
    return entropy(logits).mean()


def mcc_loss(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Minimum class confusion: off-diagonal mass of the entropy-weighted class correlation matrix."""
    n, k = logits.shape
    p = F.softmax(logits / temperature, 1)
    entropy = -(p * torch.log(p + 1e-5)).sum(1).detach()
    w = (1 + torch.exp(-entropy)) * n / (1 + torch.exp(-entropy)).sum()
    c = (p * w[:, None]).T @ p
    c = c / c.sum(1, keepdim=True)
    return (c.sum() - c.trace()) / k


def information_maximisation(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SHOT's two terms: the mean prediction entropy (to minimise: confident predictions) and the entropy of
    the mean prediction (to maximise: diverse predictions, no collapse into a few classes)."""
    p = F.softmax(logits.float(), 1)
    mean = p.mean(0)
    return entropy(logits).mean(), -(mean * torch.log(mean + 1e-5)).sum()


def _with_bias(features: torch.Tensor) -> torch.Tensor:
    ones = torch.ones(len(features), 1, device=features.device, dtype=features.dtype)
    return F.normalize(torch.cat([features, ones], 1), dim=1)


def nearest_centroid(features: torch.Tensor, centroids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Index of the most cosine-similar valid centroid for each feature (a constant 1 appended, as SHOT does)."""
    sim = _with_bias(features) @ F.normalize(centroids, dim=1).T
    return sim.masked_fill(~valid, float("-inf")).argmax(1)


def shot_centroids(features: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SHOT's self-supervised centroids: class centroids of the (bias-appended, normalised) features weighted by
    the predicted probabilities, then recomputed once from the hard nearest-centroid assignments. Classes the
    model never predicts are left out (``valid`` False), as in the paper."""
    f = _with_bias(features.float())
    valid = torch.bincount(probs.argmax(1), minlength=probs.shape[1]) > 0
    centroids = probs.float().T @ f / (probs.float().sum(0)[:, None] + 1e-8)
    onehot = F.one_hot(nearest_centroid(features.float(), centroids, valid), probs.shape[1]).float()
    centroids = onehot.T @ f / (onehot.sum(0)[:, None] + 1e-8)
    return centroids, valid


class DomainDiscriminator(nn.Sequential):
    """Features -> probability-of-source logit (two hidden layers, BatchNorm in them with ``norm="batch"``)."""

    def __init__(self, in_features: int, hidden: int, norm: str = "none") -> None:
        def bn() -> nn.Module:
            return nn.BatchNorm1d(hidden) if norm == "batch" else nn.Identity()

        super().__init__(
            nn.Linear(in_features, hidden),
            bn(),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            bn(),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )
