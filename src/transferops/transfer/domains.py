"""One forward pass per domain, so that BatchNorm never mixes domains.

A BatchNorm layer in train mode normalises a batch with that batch's own mean and variance and folds them
into its running statistics, which are what it uses at evaluation. A single pass over
``cat([source, target])`` normalises both domains with a mixture of their statistics: neither domain is
centred, the features carry the domain offset into every later layer (the discriminator of DANN wins on it,
the classifier sees target features shifted from where it learnt the source), and the running statistics
the deployed model keeps are a source/target blend that fits neither.

Here every method that sees several domains runs them through the backbone separately:

- the **source** pass normalises with the source batch's statistics and leaves the running statistics
  untouched (:func:`running_stats_frozen`);
- the **target** pass (unlabelled and labelled target images together: one domain) normalises with the
  target batch's statistics and is the only one that updates the running statistics.

So the model that is evaluated and registered carries **target** BatchNorm statistics only (an exponential
average over the target batches of training), as AdaBN prescribes for the domain it will serve.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from transferops.models import TransferNet


@contextlib.contextmanager
def running_stats_frozen(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers in train mode keep normalising with each batch's statistics but do not update their
    running statistics (momentum 0 for the duration; the batch counter is restored)."""
    saved = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            saved.append((m, m.momentum, m.num_batches_tracked.clone()))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, count in saved:
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


def source_features(model: TransferNet, x: torch.Tensor) -> torch.Tensor:
    """Backbone features of a source batch: its own BatchNorm statistics, running statistics untouched."""
    with running_stats_frozen(model):
        return model.features(x)


def target_features(model: TransferNet, *batches: torch.Tensor) -> list[torch.Tensor]:
    """Backbone features of target batches (e.g. unlabelled and labelled) in one pass: they are one domain."""
    feats = model.features(torch.cat(batches) if len(batches) > 1 else batches[0])
    return list(feats.split([len(b) for b in batches]))


def target_pass(
    model: TransferNet, batches: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Features of the step's unlabelled target batch and, when it has one, of its labelled target batch: one
    target pass for both (they are one domain), split back apart."""
    xt = batches["unlabeled"][0]
    if "labeled" not in batches:
        return model.features(xt), None
    ft, fl = target_features(model, xt, batches["labeled"][0])
    return ft, fl


def labeled_target_term(
    ce: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    model: TransferNet,
    labeled_features: torch.Tensor | None,
    batches: dict[str, tuple[torch.Tensor, torch.Tensor]],
    logs: dict[str, torch.Tensor],
) -> torch.Tensor | None:
    """Cross-entropy on the labelled target images of a step (k > 0), logged as ``ce_target``; ``None`` when the
    step has none (k = 0). The methods that adapt on unlabelled target images add it with their
    ``target_weight``."""
    if labeled_features is None:
        return None
    ce_t = ce(classify(model, labeled_features), batches["labeled"][1])
    logs["ce_target"] = ce_t.detach()
    return ce_t


def classify(model: TransferNet, features: torch.Tensor) -> torch.Tensor:
    """Logits of backbone features (dropout then head, as ``model.forward``)."""
    return model.head(model.dropout(features))
