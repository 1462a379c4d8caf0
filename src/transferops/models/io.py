"""Model checkpoints: what pretrain and finetune save, and how any later step rebuilds the network.

A model checkpoint is a plain dict (tensors, strings, numbers) loaded with ``weights_only=True``: the state
dict, how to rebuild the architecture, the class names, the image geometry, the resolved config and the
lineage (git sha, params hash, dataset versions).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from transferops.config import Config
from transferops.models.factory import TransferNet, create_model
from transferops.training.checkpoint import FORMAT, load_model_checkpoint, save_checkpoint


def save_model(path: Path, model: TransferNet, cfg: Config, classes: list[str], lineage: dict[str, Any]) -> None:
    """Atomically write a model checkpoint."""
    payload = {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model": asdict(cfg.model),
        "classes": list(classes),
        "in_channels": cfg.ingest.channels,
        "image_size": cfg.ingest.image_size,
        "config": cfg.to_dict(),
        "lineage": lineage,
    }
    save_checkpoint(path, payload)


def build_model(ckpt: dict[str, Any]) -> TransferNet:
    """Rebuild the network a checkpoint describes and load its weights (strictly)."""
    m = ckpt["model"]
    model = create_model(
        m["name"],
        len(ckpt["classes"]),
        weights="none",
        in_channels=ckpt["in_channels"],
        width=m["width"],
        dropout=m["dropout"],
    )
    model.load_state_dict(ckpt["state_dict"])
    return model


def load_model(path: Path) -> tuple[TransferNet, dict[str, Any]]:
    """(model in eval mode, checkpoint dict) from a checkpoint file."""
    ckpt = load_model_checkpoint(path)
    model = build_model(ckpt)
    model.eval()
    return model, ckpt
