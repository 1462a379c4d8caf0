"""Test-time augmentation (``evaluate.tta``): average the model's probabilities over a few views of each test
image, and report what that changes.

- ``flip``: the image and its horizontal mirror. Wrong for digits, letters and text: a mirrored 2, 3, 7 or
  S is another shape (or none), so the average mixes evidence for the wrong class;
- ``crops``: the centre and the four corners. Images stored larger than the network's input are cut at the
  input size (torchvision's FiveCrop); images stored at the input size are cut at :data:`CROP_FRACTION` of
  their side and resized back.

The served model (``transferops predict``, the registered versions) scores one view, so TTA does not replace
the reported ``accuracy``: :func:`tta_metrics` adds ``tta_accuracy`` and ``tta_gain`` beside it, on the same
test images, and the gate keeps comparing single-view accuracies.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from transferops.data.augment import eval_transform
from transferops.data.batches import iterate

CROP_FRACTION = 0.875
"""Side of the corner crops relative to the image, when the image is stored at the network's input size."""


def _identity(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [eval_transform(x, size)]


def _flip(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    v = eval_transform(x, size)
    return [v, v.flip(-1)]


def _crops(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    h, w = x.shape[-2:]
    size = size or h
    side = size if min(h, w) > size else max(1, round(CROP_FRACTION * min(h, w)))
    corners = [((h - side) // 2, (w - side) // 2), (0, 0), (0, w - side), (h - side, 0), (h - side, w - side)]
    views = [x[..., t : t + side, s : s + side] for t, s in corners]
    if side != size:
        views = [F.interpolate(v, size=(size, size), mode="bilinear", align_corners=False) for v in views]
    return views


VIEWS: dict[str, Callable[[torch.Tensor, int], list[torch.Tensor]]] = {
    "none": _identity,
    "flip": _flip,
    "crops": _crops,
}
"""``evaluate.tta`` -> the views of a batch (each (B, C, S, S) at the network's input size)."""


def predict_tta(model, split, mode: str, batch_size: int = 256, device="cpu") -> np.ndarray:
    """Class probabilities (N, K) averaged over the views of ``mode``, in the split's order."""
    views = VIEWS[mode]
    size = getattr(model, "input_size", 0)
    was_training = model.training
    model.eval()
    out = []
    with torch.inference_mode():
        for x, _ in iterate(split, batch_size):
            x = x.to(device)
            probs = [torch.softmax(model(v).float(), dim=1) for v in views(x, size)]
            out.append(torch.stack(probs).mean(0).cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.empty((0, 0), dtype=np.float32)


def tta_metrics(model, split, mode: str, probs: np.ndarray, device="cpu") -> dict[str, float | str]:
    """``tta`` (the mode), ``tta_accuracy`` and ``tta_gain`` (over the single-view ``probs``); empty for
    ``none``."""
    if mode == "none" or len(split) == 0:
        return {}
    labels = np.asarray(split.labels)
    tta = float((predict_tta(model, split, mode, device=device).argmax(1) == labels).mean())
    return {"tta": mode, "tta_accuracy": tta, "tta_gain": tta - float((probs.argmax(1) == labels).mean())}
