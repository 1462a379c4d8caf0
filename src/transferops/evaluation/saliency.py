"""Grad-CAM saliency: where in an image the evidence for a class is, according to the model's last
convolutional stage.

Grad-CAM (Selvaraju et al., 2017) weighs each channel of the last convolutional feature map by the mean
gradient of the class logit with respect to it, sums the weighted channels, keeps the positive part and
upsamples it to the image. It needs no change to the model and works for every backbone the factory builds:
the last stage of :meth:`TransferNet.stages` is the last convolutional block of smallcnn (read before its
max-pooling), ``layer4`` of a
ResNet and the last ``features`` block of MobileNet/EfficientNet/ConvNeXt (:func:`target_layer`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from transferops.data.augment import eval_transform
from transferops.models.factory import TransferNet

POOLS = (nn.MaxPool2d, nn.AvgPool2d)


def target_layer(model: TransferNet) -> nn.Module:
    """The module whose output Grad-CAM reads: the last module of the backbone's last stage (before a final
    pooling layer, which halves the map's resolution), or the backbone's last ``Conv2d`` when it declares no
    stages."""
    stages = model.stages()
    if stages and stages[-1]:
        last = stages[-1][-1]
        children = list(last.children()) if isinstance(last, nn.Sequential) else []
        if len(children) > 1 and isinstance(children[-1], POOLS):  # smallcnn: the map before its last pooling
            return children[-2]
        return last
    convs = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model.backbone).__name__}: no convolutional layer to explain")
    return convs[-1]


def grad_cam(model: TransferNet, images: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
    """Grad-CAM maps (N, H, W) in [0, 1] of ``images`` (N, C, H, W floats in [0, 1], as stored: the evaluation
    crop is applied here) for ``classes`` (N,) (None: each image's predicted class).

    Each map is normalised by its own maximum (an all-zero map stays zero) and has the size of the image the
    network sees. The model's train/eval mode and its parameters' ``requires_grad`` are left as they were.
    """
    layer = target_layer(model)
    was_training = model.training
    model.eval()
    x = eval_transform(images.detach().float(), model.input_size).clone().requires_grad_(True)
    store: dict[str, torch.Tensor] = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        store["act"] = output

    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(x)
            target = logits.argmax(1) if classes is None else classes.to(logits.device).long()
            model.zero_grad(set_to_none=True)
            logits.gather(1, target[:, None]).sum().backward()
        act, grad = store["act"], store["act"].grad
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * act).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        peak = cam.flatten(1).max(1).values.clamp_min(1e-12)[:, None, None]
        cam = (cam / peak).detach()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return cam
