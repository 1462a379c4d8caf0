"""Inference on a split: probabilities, features, accuracy. Apart from training on purpose: evaluation,
registration, baselines and strategies all need it, and none of them should import the training loop.

Every function runs under ``torch.inference_mode()``, reads the split a batch at a time (memory-mapped
shards stay on disk), applies the evaluation transform (centre crop to ``model.input_size``) and, on CUDA,
the precision the run trained with.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from transferops.data.augment import eval_transform
from transferops.data.batches import iterate
from transferops.data.shards import Split

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device | str, precision: str = "fp32"):
    """The autocast context of a precision (fp32: none). fp16 autocast is used on CUDA only."""
    device = torch.device(device)
    if precision == "fp32" or (precision == "fp16" and device.type != "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST[precision])


def _batches(model: nn.Module, split: Split, batch_size: int, device: torch.device | str):
    size = getattr(model, "input_size", 0)
    for x, _ in iterate(split, batch_size):
        x = x.to(device, non_blocking=True)
        yield eval_transform(x, size) if x.ndim == 4 else x


def predict_proba(
    model: nn.Module, split: Split, batch_size: int = 512, device: torch.device | str = "cpu", precision: str = "fp32"
) -> np.ndarray:
    """Class probabilities (N, K) of ``model`` on a split, in order."""
    was_training = model.training
    model.eval()
    with torch.inference_mode(), autocast(device, precision):
        probs = [torch.softmax(model(x).float(), dim=1).cpu() for x in _batches(model, split, batch_size, device)]
    model.train(was_training)
    if not probs:
        return np.empty((0, 0), dtype=np.float32)
    return torch.cat(probs).numpy()


def predict_features(
    model: nn.Module, split: Split, batch_size: int = 512, device: torch.device | str = "cpu", precision: str = "fp32"
) -> np.ndarray:
    """Backbone features (N, D) of a split as float32, in eval mode (what a linear probe caches)."""
    was_training = model.training
    model.eval()
    with torch.inference_mode(), autocast(device, precision):
        feats = [model.features(x).float().cpu() for x in _batches(model, split, batch_size, device)]
    model.train(was_training)
    return torch.cat(feats).numpy() if feats else np.empty((0, model.feature_dim), dtype=np.float32)


def accuracy(model: nn.Module, split: Split, device: torch.device | str = "cpu", precision: str = "fp32") -> float:
    """Top-1 accuracy on a split (nan when the split is empty)."""
    if len(split) == 0:
        return float("nan")
    return float((predict_proba(model, split, device=device, precision=precision).argmax(1) == split.labels).mean())
