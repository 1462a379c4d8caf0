"""Model factory: one wrapper, :class:`TransferNet`, around any backbone.

Every model the pipeline trains is ``backbone -> features -> dropout -> head``. Transfer methods need exactly
that split (freeze the backbone, swap the head, align the features of two domains), so it is made explicit
here once instead of being rediscovered per architecture. Input normalisation lives inside the model as
buffers: the network takes images as floats in [0, 1], and a model loaded from the registry needs no
preprocessing code beside it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from transferops.config import ModelConfig
from transferops.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TransferNet(nn.Module):
    """``backbone`` maps normalised images to (B, feature_dim) features; ``head`` maps those to logits.

    ``stages`` lists the backbone's blocks from input to output, for partial freezing.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        num_classes: int,
        stages: list[nn.Module | tuple[nn.Module, ...]],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        dropout: float = 0.0,
        input_size: int = 0,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        """Side of the images the network is trained and evaluated on (0 = as stored); inference centre-crops
        or resizes to it."""
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)
        names = {id(m): n for n, m in backbone.named_modules()}
        self._stage_names = [[names[id(m)] for m in (s if isinstance(s, tuple) else (s,))] for s in stages]
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=True)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=True)

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def stages(self) -> list[list[nn.Module]]:
        """Backbone blocks from input to output, each a list of modules (what ``freeze_stages`` counts)."""
        mods = dict(self.backbone.named_modules())
        return [[mods[n] for n in names] for names in self._stage_names]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) floats in [0, 1] -> (B, feature_dim) features."""
        return self.backbone((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))

    def reset_head(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one (for a new class set or a new task)."""
        device = self.head.weight.device
        self.head = nn.Linear(self.feature_dim, num_classes).to(device)


# ---------------------------------------------------------------------------------------- architectures
NORMS: dict[str, Callable[[int], nn.Module]] = {
    "batch": nn.BatchNorm2d,
    "group": lambda c: nn.GroupNorm(min(8, c), c),
}


def _block(cin: int, cout: int, norm: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        NORMS[norm](cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        NORMS[norm](cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


def small_cnn(in_channels: int, width: int, norm: str = "batch") -> tuple[nn.Module, int, list]:
    """Three conv blocks (width, 2w, 4w) + global average pooling: fast on two CPU cores at 28 px."""
    blocks = [_block(in_channels, width, norm), _block(width, 2 * width, norm), _block(2 * width, 4 * width, norm)]
    backbone = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return backbone, 4 * width, blocks


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ConfigError(f"model {type(model).__name__}: no Linear classifier to replace")
    return found[-1]


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    """Make the first conv take ``in_channels``; pretrained RGB filters are summed (grey) or averaged."""
    name, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    if conv.in_channels == in_channels:
        return
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
    )
    with torch.no_grad():
        w = conv.weight.sum(dim=1, keepdim=True) if in_channels == 1 else conv.weight.mean(1, keepdim=True)
        new.weight.copy_(w.repeat(1, in_channels, 1, 1) / (1 if in_channels == 1 else in_channels / 3))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    _set_module(model, name, new)


def _torchvision_stages(model: nn.Module) -> list:
    if hasattr(model, "layer1"):  # ResNet family
        return [(model.conv1, model.bn1), model.layer1, model.layer2, model.layer3, model.layer4]
    if hasattr(model, "features"):  # MobileNet, EfficientNet, VGG, ConvNeXt...
        return list(model.features.children())
    return [m for m in model.children() if any(p.requires_grad for p in m.parameters())]


def torchvision_backbone(name: str, in_channels: int, weights: str) -> tuple[nn.Module, int, list]:
    """A torchvision classifier with its last Linear layer removed; optionally with torchvision weights."""
    import torchvision.models as tvm

    if name not in tvm.list_models(module=tvm):
        raise ConfigError(f"model.name: unknown model {name!r} (expected smallcnn or a torchvision classifier)")
    model = tvm.get_model(name, weights=None)
    if weights not in ("", "none") and not is_weights_path(weights):
        model.load_state_dict(_torchvision_state_dict(weights))
    head_name, head = _last_linear(model)
    feature_dim = head.in_features
    _set_module(model, head_name, nn.Identity())
    _adapt_first_conv(model, in_channels)
    return model, feature_dim, _torchvision_stages(model)


def is_weights_path(weights: str) -> bool:
    """Whether ``model.weights`` names a checkpoint file (rather than none or a torchvision weights enum)."""
    return weights.endswith((".pt", ".pth", ".ckpt")) or "/" in weights


def _torchvision_state_dict(weights: str) -> dict[str, torch.Tensor]:
    """Load a torchvision weights enum's file from TORCH_HOME only: never downloads."""
    import torchvision.models as tvm

    try:
        enum = tvm.get_weight(weights)
    except (ValueError, KeyError, AttributeError):
        raise ConfigError(
            f"model.weights: unknown torchvision weights {weights!r} (e.g. ResNet18_Weights.IMAGENET1K_V1)"
        ) from None
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
    if not path.is_file():
        raise CheckpointError(
            f"{path}: torchvision weights {weights} not found; download {enum.url} on a machine with network "
            "access and stage it there (or set TORCH_HOME)"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


ARCHITECTURES: dict[str, Callable[..., tuple[nn.Module, int, list]]] = {
    "smallcnn": lambda in_channels, width, weights, norm: small_cnn(in_channels, width, norm),
}


def create_model(
    name: str,
    num_classes: int,
    weights: str = "none",
    in_channels: int = 1,
    width: int = 32,
    dropout: float = 0.0,
    input_size: int = 0,
    norm: str = "batch",
) -> TransferNet:
    """Build a :class:`TransferNet`.

    Args:
        name: ``smallcnn`` or any torchvision classification model (``resnet18``, ``mobilenet_v3_small``, ...).
        num_classes: size of the new head; when it differs from the pretrained classifier the head is new.
        weights: ``none``; a torchvision weights enum such as ``ResNet18_Weights.IMAGENET1K_V1``, read from
            ``$TORCH_HOME/hub/checkpoints`` (offline: a clear error says where to stage the file); or the path
            of a transferops checkpoint, whose backbone (and head, when the classes match) is loaded.
        in_channels: 1 or 3; a pretrained RGB stem is adapted by summing its filters.
        width: smallcnn width; ignored for torchvision models.
        dropout: dropout before the head.
        input_size: side of the images the network sees (0 = as stored).
        norm: smallcnn normalisation, ``batch`` or ``group``.
    """
    if name in ARCHITECTURES:
        backbone, dim, stages = ARCHITECTURES[name](in_channels=in_channels, width=width, weights=weights, norm=norm)
        mean, std = (0.5,) * in_channels, (0.5,) * in_channels
    else:
        backbone, dim, stages = torchvision_backbone(name, in_channels, weights)
        mean = IMAGENET_MEAN if in_channels == 3 else (sum(IMAGENET_MEAN) / 3,)
        std = IMAGENET_STD if in_channels == 3 else (sum(IMAGENET_STD) / 3,)
    model = TransferNet(backbone, dim, num_classes, stages, mean, std, dropout, input_size)
    if is_weights_path(weights):
        from transferops.training.checkpoint import load_checkpoint

        ckpt = load_checkpoint(Path(weights))
        load_weights(model, ckpt["state_dict"], source=weights)
    return model


def model_from_config(m: ModelConfig, num_classes: int, in_channels: int, weights: str | None = None) -> TransferNet:
    """The network ``model:`` describes (the one way pretrain, the baselines and checkpoints build it);
    ``weights`` overrides ``m.weights`` (e.g. ``none`` for a from-scratch baseline)."""
    return create_model(
        m.name,
        num_classes,
        m.weights if weights is None else weights,
        in_channels,
        m.width,
        m.dropout,
        m.input_size,
        m.norm,
    )


def load_weights(model: TransferNet, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> bool:
    """Load backbone weights, and the head too when its shape matches; returns whether the head was loaded."""
    own = model.state_dict()
    head_ok = all(k in state_dict and state_dict[k].shape == own[k].shape for k in ("head.weight", "head.bias"))
    wanted = {k: v for k, v in state_dict.items() if head_ok or not k.startswith("head.")}
    try:
        missing, unexpected = model.load_state_dict(wanted, strict=False)
    except RuntimeError as exc:  # shape mismatches: another architecture or width
        raise CheckpointError(f"{source}: weights do not fit model ({str(exc).splitlines()[1].strip()})") from None
    missing = [k for k in missing if head_ok or not k.startswith("head.")]
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not fit model (missing {missing[:3]}, unexpected {list(unexpected)[:3]})"
        )
    return head_ok
