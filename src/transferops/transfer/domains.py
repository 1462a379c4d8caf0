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
from collections.abc import Iterator

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


def classify(model: TransferNet, features: torch.Tensor) -> torch.Tensor:
    """Logits of backbone features (dropout then head, as ``model.forward``)."""
    return model.head(model.dropout(features))
