"""Splits, shards and the manifest: how an ingested dataset is laid out on disk.

A dataset directory holds, per split, a few ``<split>-NNN.images.npy`` / ``.labels.npy`` shard pairs and one
``manifest.json`` (class names, image shape, counts per split and class, the sha256 of every shard, and a
``version`` hash over all of them). ``.npy`` is read with ``allow_pickle=False``: loading data can never run
code, and the bytes written are a pure function of the data, so the same seed gives the same version hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transferops.config import SplitConfig
from transferops.errors import DataError

SPLITS = ("labeled", "unlabeled", "val", "test")
MANIFEST = "manifest.json"


def stratified_split(labels: np.ndarray, num_classes: int, split: SplitConfig, seed: int) -> dict[str, np.ndarray]:
    """Cut indices per class into test / val / labeled / unlabeled; seeded, sorted, disjoint.

    Per class: ``round(test_fraction * n)`` test images, then ``val_per_class`` val images, then
    ``labels_per_class`` labelled ones (all when null), the rest unlabelled.
    """
    rng = np.random.default_rng([seed, 0x5B1])
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for c in range(num_classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = len(idx)
        n_test = int(round(split.test_fraction * n))
        n_val = min(split.val_per_class, n - n_test)
        rest = n - n_test - n_val
        n_lab = rest if split.labels_per_class is None else min(split.labels_per_class, rest)
        if split.labels_per_class and n_lab < split.labels_per_class:
            raise DataError(
                f"class {c}: {n} images cannot give {n_test} test + {n_val} val + "
                f"{split.labels_per_class} labelled (labels_per_class too large for this class)"
            )
        cuts = np.cumsum([n_test, n_val, n_lab])
        parts["test"].append(idx[: cuts[0]])
        parts["val"].append(idx[cuts[0] : cuts[1]])
        parts["labeled"].append(idx[cuts[1] : cuts[2]])
        parts["unlabeled"].append(idx[cuts[2] :])
    return {s: np.sort(np.concatenate(v)).astype(np.int64) for s, v in parts.items()}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def write_dataset(
    out_dir: Path,
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    splits: dict[str, np.ndarray],
    shard_size: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write shards and ``manifest.json`` into ``out_dir`` (which must be empty); returns the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "classes": classes,
        "image_shape": list(images.shape[1:]),
        "splits": {},
    }
    for name in SPLITS:
        idx = splits.get(name, np.empty(0, dtype=np.int64))
        shards = []
        for s, start in enumerate(range(0, len(idx), shard_size)):
            sel = idx[start : start + shard_size]
            stem = f"{name}-{s:03d}"
            _save_npy(out_dir / f"{stem}.images.npy", images[sel])
            _save_npy(out_dir / f"{stem}.labels.npy", labels[sel])
            shards.append(
                {
                    "images": f"{stem}.images.npy",
                    "labels": f"{stem}.labels.npy",
                    "count": int(len(sel)),
                    "sha256": {
                        "images": _sha256(out_dir / f"{stem}.images.npy"),
                        "labels": _sha256(out_dir / f"{stem}.labels.npy"),
                    },
                }
            )
        counts = np.bincount(labels[idx], minlength=len(classes)) if len(idx) else np.zeros(len(classes), int)
        manifest["splits"][name] = {
            "count": int(len(idx)),
            "per_class": {c: int(n) for c, n in zip(classes, counts, strict=True)},
            "shards": shards,
        }
    manifest["version"] = _version(manifest)
    manifest.update(extra or {})
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _version(manifest: dict[str, Any]) -> str:
    core = {k: manifest[k] for k in ("classes", "image_shape", "splits")}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]


def read_manifest(data_dir: Path) -> dict[str, Any]:
    """The manifest of an ingested dataset; a clear error when ingest has not run there."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: dataset manifest not found (run `transferops ingest` first)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: corrupt manifest ({exc})") from None


@dataclass
class Split:
    """One split in memory: images (N, C, H, W) uint8 and labels (N,) int64, as numpy arrays."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def load_split(data_dir: Path, split: str, verify: bool = True) -> Split:
    """Load one split, checking every shard against the sha256 recorded in the manifest."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    if split not in manifest["splits"]:
        raise DataError(f"{data_dir / MANIFEST}: no split {split!r} (expected one of {', '.join(SPLITS)})")
    images, labels = [], []
    for shard in manifest["splits"][split]["shards"]:
        for key, out in (("images", images), ("labels", labels)):
            path = data_dir / shard[key]
            if not path.is_file():
                raise DataError(f"{path}: shard missing (re-run ingest or `dvc pull`)")
            if verify and _sha256(path) != shard["sha256"][key]:
                raise DataError(f"{path}: sha256 does not match {MANIFEST} (corrupt or modified shard)")
            out.append(np.load(path, allow_pickle=False))
    shape = tuple(manifest["image_shape"])
    if not images:
        return Split(np.empty((0, *shape), np.uint8), np.empty(0, np.int64))
    return Split(np.concatenate(images), np.concatenate(labels))
