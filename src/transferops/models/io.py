"""Model checkpoints: what pretrain and finetune save, and how any later step rebuilds the network.

A model checkpoint is a plain dict (tensors, strings, numbers) loaded with ``weights_only=True``: the state
dict, how to rebuild the architecture, the class names, the image geometry the network was trained on (from
the ingested data, never from params), the resolved config and the lineage (git sha, params hash, dataset
versions, method).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from transferops.config import Config, ModelConfig
from transferops.models.factory import TransferNet, model_from_config
from transferops.training.checkpoint import FORMAT, load_model_checkpoint, save_checkpoint


def save_model(
    path: Path,
    model: TransferNet,
    cfg: Config,
    classes: list[str],
    image_shape: list[int],
    lineage: dict[str, Any],
) -> None:
    """Atomically write a model checkpoint; ``image_shape`` is the (C, H, W) of the ingested images."""
    payload = {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model": asdict(cfg.model),
        "classes": list(classes),
        "in_channels": int(image_shape[0]),
        "image_size": int(image_shape[1]),
        "input_size": int(model.input_size or image_shape[1]),
        "config": cfg.to_dict(),
        "lineage": lineage,
    }
    save_checkpoint(path, payload)


def model_config_of(ckpt: dict[str, Any]) -> ModelConfig:
    """The ``model:`` settings a checkpoint was built with (settings added since keep their defaults)."""
    fields = ModelConfig.__dataclass_fields__
    return ModelConfig(**{k: v for k, v in ckpt["model"].items() if k in fields})


def build_model(ckpt: dict[str, Any]) -> TransferNet:
    """Rebuild the network a checkpoint describes and load its weights (strictly)."""
    model = model_from_config(model_config_of(ckpt), len(ckpt["classes"]), ckpt["in_channels"], weights="none")
    model.input_size = int(ckpt.get("input_size") or 0)
    model.load_state_dict(ckpt["state_dict"])
    return model


def load_model(path: Path) -> tuple[TransferNet, dict[str, Any]]:
    """(model in eval mode, checkpoint dict) from a checkpoint file."""
    ckpt = load_model_checkpoint(path)
    model = build_model(ckpt)
    model.eval()
    return model, ckpt
