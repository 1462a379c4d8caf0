"""Grad-CAM points at the evidence: on a model that learned to find a bright square, the map peaks on it."""

import numpy as np
import pytest
import torch

from transferops.evaluation.saliency import grad_cam, target_layer
from transferops.models import create_model

SIZE, SQUARE = 32, 6
STEPS, BATCH = 30, 32


def _squares(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Dim noise; class 1 images also hold a bright square at a random place. Returns images, labels and the
    squares' top-left corners."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 0.3, (n, 1, SIZE, SIZE)).astype(np.float32)
    y = np.arange(n) % 2
    corners = rng.integers(0, SIZE - SQUARE + 1, (n, 2))
    for i in np.flatnonzero(y == 1):
        r, c = corners[i]
        x[i, 0, r : r + SQUARE, c : c + SQUARE] = 1.0
    return torch.from_numpy(x), torch.from_numpy(y), corners


@pytest.fixture(scope="module")
def square_model():
    torch.manual_seed(0)
    model = create_model("smallcnn", 2, in_channels=1, width=8)
    opt = torch.optim.Adam(model.parameters(), 0.01)
    for step in range(STEPS):
        x, y, _ = _squares(BATCH, step)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def test_grad_cam_peaks_on_the_square_that_makes_the_class(square_model):
    x, y, corners = _squares(80, 999)
    assert (square_model(x).argmax(1) == y).float().mean() > 0.95  # the model found the evidence
    pos = np.flatnonzero(y.numpy() == 1)
    cam = grad_cam(square_model, x[pos], torch.ones(len(pos), dtype=torch.long)).numpy()
    assert cam.shape == (len(pos), SIZE, SIZE) and cam.min() >= 0.0 and np.allclose(cam.max((1, 2)), 1.0)
    cell = SIZE // 4  # the last stage's map is 4 x 4 cells for a 32 px image
    dist, inside, outside = [], [], []
    for m, (r, c) in zip(cam, corners[pos], strict=True):
        pr, pc = np.unravel_index(m.argmax(), m.shape)
        dist.append(np.hypot(pr - (r + (SQUARE - 1) / 2), pc - (c + (SQUARE - 1) / 2)))
        mask = np.zeros_like(m, dtype=bool)
        mask[r : r + SQUARE, c : c + SQUARE] = True
        inside.append(m[mask].mean())
        outside.append(m[~mask].mean())
    dist = np.array(dist)
    assert (dist <= cell).mean() >= 0.9 and np.median(dist) <= 0.75 * cell, dist  # a random point: ~15 px
    assert np.mean(inside) > 2.5 * np.mean(outside), (np.mean(inside), np.mean(outside))


def test_the_model_is_left_as_it_was(square_model):
    square_model.train()
    for p in square_model.backbone.parameters():
        p.requires_grad_(False)  # a frozen backbone (linear probe) still gets a map
    try:
        cam = grad_cam(square_model, _squares(4, 1)[0])
        assert square_model.training and cam.shape == (4, SIZE, SIZE)
        assert all(p.grad is None for p in square_model.parameters())
    finally:
        for p in square_model.backbone.parameters():
            p.requires_grad_(True)
        square_model.eval()


def test_torchvision_backbones_are_explained_at_their_last_stage():
    small = create_model("smallcnn", 3, in_channels=1, width=8)
    assert target_layer(small) is small.backbone[2][5]  # the last block's ReLU, before its max-pooling
    resnet = create_model("resnet18", 3, in_channels=3)
    assert target_layer(resnet) is resnet.backbone.layer4
    mobile = create_model("mobilenet_v3_small", 3, in_channels=3)
    assert target_layer(mobile) is mobile.backbone.features[-1]
    cam = grad_cam(resnet, torch.rand(2, 3, 64, 64))
    assert cam.shape == (2, 64, 64) and torch.all(cam <= 1.0)
