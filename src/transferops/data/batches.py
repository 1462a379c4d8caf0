"""Batches for training: stateless, seeded sampling and on-the-fly augmentation.

The batch drawn at step ``s`` is a pure function of (seed, stream, s): a run resumed from a checkpoint at
step ``s`` draws exactly the batches the uninterrupted run would have drawn, with no sampler state to save.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from transferops.data.shards import Split


def _gen(*keys: int) -> torch.Generator:
    seed = int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


class BatchStream:
    """Endless shuffled batches over one split, indexable by global step.

    Each pass over the data is a fresh seeded permutation; when the split is smaller than the batch size a
    batch is the whole split.
    """

    def __init__(self, split: Split, batch_size: int, seed: int, stream: int = 0) -> None:
        if len(split) == 0:
            raise ValueError("cannot draw batches from an empty split")
        self.images = torch.from_numpy(split.images)
        self.labels = torch.from_numpy(split.labels)
        self.batch_size = min(batch_size, len(split))
        self.per_pass = len(split) // self.batch_size
        self.seed, self.stream = seed, stream
        self._perm_pass, self._perm = -1, None

    @property
    def steps_per_pass(self) -> int:
        """Steps that make one pass over the split (a partial last batch is dropped)."""
        return self.per_pass

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Images as float in [0, 1] and labels, for global step ``step``."""
        p, i = divmod(step, self.per_pass)
        if p != self._perm_pass:
            self._perm = torch.randperm(len(self.labels), generator=_gen(self.seed, self.stream, p))
            self._perm_pass = p
        idx = self._perm[i * self.batch_size : (i + 1) * self.batch_size]
        return to_float(self.images[idx]), self.labels[idx]


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, C, H, W) -> float32 in [0, 1] (models normalise internally); float inputs, such as
    cached features, pass through unchanged."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


def augment(x: torch.Tensor, seed: int, step: int) -> torch.Tensor:
    """Random affine jitter per image (rotation +-12 deg, scale 0.9-1.1, shift +-10 %, shear +-0.15).

    Runs on whatever device ``x`` lives on; the random draws are seeded by (seed, step).
    """
    n = x.shape[0]
    g = _gen(seed, 0xA06, step)
    u = torch.rand(n, 5, generator=g) * 2 - 1
    angle = u[:, 0] * math.radians(12)
    scale = 1 + 0.1 * u[:, 1]
    shear = 0.15 * u[:, 2]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin + shear
    theta[:, 1, 0] = sin
    theta[:, 1, 1] = cos
    theta[:, 0, 2] = 0.1 * u[:, 3]
    theta[:, 1, 2] = 0.1 * u[:, 4]
    theta = theta.to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def iterate(split: Split, batch_size: int):
    """Ordered, un-augmented batches for evaluation and feature extraction."""
    images = torch.from_numpy(split.images)
    labels = torch.from_numpy(split.labels)
    for start in range(0, len(labels), batch_size):
        yield to_float(images[start : start + batch_size]), labels[start : start + batch_size]
