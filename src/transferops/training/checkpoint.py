"""Checkpoints: atomic writes, safe loads.

Every file is written to a temporary name in the same directory, fsynced, then renamed over the target: a
process killed mid-write (a preempted spot node) leaves the previous checkpoint intact, never a truncated
one. Every load uses ``torch.load(weights_only=True)``: a checkpoint can hold tensors and plain data only,
so loading one can never run code.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transferops.errors import CheckpointError

if TYPE_CHECKING:
    import torch

FORMAT = "transferops.checkpoint/1"


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(file)`` on a temp file beside ``path``, fsync it, and rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Atomically save a dict of tensors and plain data."""
    import torch  # here, not at import: the atomic writers serve stages that never load torch

    atomic_write_bytes(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; missing or truncated files give a one-line error."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError... for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: unreadable checkpoint, truncated or not a torch file ({first[:200]})") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict, got {type(payload).__name__}")
    return payload


def load_model_checkpoint(path: Path) -> dict[str, Any]:
    """Load a model checkpoint written by pretrain or finetune and check its format."""
    ckpt = load_checkpoint(path)
    if ckpt.get("format") != FORMAT or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a transferops model checkpoint (expected format {FORMAT})")
    return ckpt
