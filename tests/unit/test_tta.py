"""Test-time augmentation: the views are the ones named, and a mirror hurts a model that reads handedness."""

import numpy as np
import pytest
import torch
from torch import nn

from transferops.data.shards import Split
from transferops.evaluation.tta import VIEWS, predict_tta, tta_metrics


class LeftOrRight(nn.Module):
    """Class 0 when the left half is brighter, class 1 when the right half is: a model of handedness."""

    input_size = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return 10 * torch.stack([x[..., :half].mean((1, 2, 3)), x[..., half:].mean((1, 2, 3))], 1)


def _sided(n: int, size: int = 12) -> Split:
    x = np.zeros((n, 1, size, size), np.uint8)
    y = np.arange(n) % 2
    for i, label in enumerate(y):
        x[i, 0, :, (size // 2) * label : (size // 2) * (label + 1)] = 200
    return Split(x, y.astype(np.int64))


def test_flip_averages_a_handed_model_into_a_tie():
    split = _sided(20)
    model = LeftOrRight()
    plain = predict_tta(model, split, "none")
    assert (plain.argmax(1) == split.labels).mean() == 1.0
    flipped = predict_tta(model, split, "flip")
    np.testing.assert_allclose(flipped, 0.5, atol=1e-6)  # each image and its mirror: opposite evidence
    m = tta_metrics(model, split, "flip", plain)
    assert m["tta"] == "flip" and m["tta_accuracy"] == 0.5 and m["tta_gain"] == pytest.approx(-0.5)
    assert tta_metrics(model, split, "none", plain) == {}


def test_crops_are_the_centre_and_the_four_corners():
    x = torch.arange(32 * 32, dtype=torch.float32).view(1, 1, 32, 32)
    views = VIEWS["crops"](x, 28)  # stored larger than the input: cut at the input size
    assert [v.shape[-1] for v in views] == [28] * 5
    assert torch.equal(views[0], x[..., 2:30, 2:30]) and torch.equal(views[1], x[..., :28, :28])
    assert torch.equal(views[4], x[..., 4:, 4:])
    same = VIEWS["crops"](x, 0)  # stored at the input size: 87.5 % corners, resized back
    assert [v.shape[-1] for v in same] == [32] * 5 and not torch.equal(same[1], same[4])
