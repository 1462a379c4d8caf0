"""Label-free scores of a model's predictions on unlabelled target images: model selection and collapse.

With no labelled target image (k = 0) an epoch cannot be chosen by target accuracy, and a failed adaptation
cannot be seen from it. These functions read only the predicted class probabilities:

- :func:`soft_neighbourhood_density` (SND; Saito et al., "Tune it the Right Way: Unsupervised Validation of
  Domain Adaptation via Soft Neighborhood Density", ICCV 2021): the mean entropy of each prediction's soft
  neighbourhood among the others. Higher is better: predictions that form dense clusters score high.
- :func:`prediction_diversity`: the entropy of the predicted-class histogram over ``log K``. A collapsed
  model puts every image into a few classes; 1 means every class is predicted equally often.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

SND_TEMPERATURE = 0.05
"""The paper's temperature for the similarity softmax."""


def soft_neighbourhood_density(probs: np.ndarray | torch.Tensor, temperature: float = SND_TEMPERATURE) -> float:
    """SND of class probabilities (N, K): rows are L2-normalised, their cosine similarities to every other
    row (the diagonal left out) go through a softmax at ``temperature``, and the mean entropy of those
    neighbourhood distributions is returned."""
    p = torch.as_tensor(probs, dtype=torch.float64)
    n = p.shape[0]
    if n < 2:
        return float("nan")
    z = F.normalize(p, dim=1)
    sim = z @ z.T
    sim = sim[~torch.eye(n, dtype=torch.bool)].view(n, n - 1)
    logq = F.log_softmax(sim / temperature, dim=1)
    return float(-(logq.exp() * logq).sum(1).mean())


def prediction_diversity(probs: np.ndarray, num_classes: int | None = None) -> float:
    """Entropy of the histogram of predicted classes / log K: 1 = every class predicted equally often, 0 =
    one class for every image."""
    k = num_classes or probs.shape[1]
    counts = np.bincount(np.asarray(probs).argmax(1), minlength=k).astype(np.float64)
    share = counts[counts > 0] / counts.sum()
    return float(-(share * np.log(share)).sum() / math.log(k)) if k > 1 else 1.0


CRITERIA = {"snd": soft_neighbourhood_density}
"""Label-free selection criteria by the name ``finetune.select`` uses (higher is better for each)."""
