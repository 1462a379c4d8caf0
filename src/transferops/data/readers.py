"""Readers that turn a dataset description into in-memory uint8 arrays.

Each reader returns a :class:`RawDataset`; the registry :data:`READERS` maps ``ingest.<domain>.kind`` to the
reader, so adding a data source is one function and one line. All images leave here with the same size
and channel count, white-on-black digits and natural photos alike.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from transferops.config import DatasetConfig, IngestConfig
from transferops.data import archive
from transferops.data.synthetic import render_digits
from transferops.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
MAX_IMAGE_PIXELS = 50_000_000
"""Images larger than this are refused as possible decompression bombs."""


@dataclass
class RawDataset:
    """Images (N, C, H, W) uint8, labels (N,) int64, class names, and where each image came from."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    origins: list[str] | None = None


def to_array(img: Image.Image, size: int, channels: int, origin: str = "") -> np.ndarray:
    """Convert one PIL image to a (C, size, size) uint8 array."""
    mode = "L" if channels == 1 else "RGB"
    try:
        img = img.convert(mode)
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise DataError(f"{origin}: cannot decode image ({exc})") from None
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1).copy()


def _cap_per_class(ds: RawDataset, cap: int, seed: int) -> RawDataset:
    if cap <= 0:
        return ds
    rng = np.random.default_rng([seed, 0xCA9])
    keep = []
    for c in range(len(ds.classes)):
        idx = np.flatnonzero(ds.labels == c)
        keep.append(np.sort(rng.permutation(idx)[:cap]))
    sel = np.sort(np.concatenate(keep))
    origins = [ds.origins[i] for i in sel] if ds.origins else None
    return RawDataset(ds.images[sel], ds.labels[sel], ds.classes, origins)


# ------------------------------------------------------------------------------------------------ readers
def read_synthetic(spec: DatasetConfig, size: int, channels: int, seed: int) -> RawDataset:
    images, labels, classes = render_digits(spec.samples_per_class, size, spec.fonts_dir, seed)
    if channels == 3:
        images = np.repeat(images, 3, axis=1)
    return RawDataset(images, labels, classes)


def read_sklearn_digits(spec: DatasetConfig, size: int, channels: int, seed: int) -> RawDataset:
    """scikit-learn's bundled handwritten digits (1,797 images, 8x8, values 0-16), resized to ``size``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    raw = np.clip(bunch.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    images = np.stack([to_array(Image.fromarray(im, mode="L"), size, channels) for im in raw])
    labels = bunch.target.astype(np.int64)
    return RawDataset(images, labels, [str(c) for c in bunch.target_names])


def read_image_folder(spec: DatasetConfig, size: int, channels: int, seed: int) -> RawDataset:
    """A tree ``root/<class>/<image>``; ``root`` may also be a .zip/.tar archive or an s3:// prefix."""
    path = spec.path
    if path.startswith("s3://"):
        from transferops.data.s3 import download_prefix

        with tempfile.TemporaryDirectory(prefix="transferops-s3-") as tmp:
            download_prefix(path, Path(tmp))
            return _read_folder(Path(tmp), size, channels, label=path)
    local = Path(path)
    if local.is_file() and archive.is_archive(local):
        with tempfile.TemporaryDirectory(prefix="transferops-archive-") as tmp:
            limits = archive.Limits(int(IngestConfig.archive_max_gib * 2**30), IngestConfig.archive_max_entries)
            root = archive.safe_extract(local, Path(tmp), limits)
            return _read_folder(root, size, channels, label=str(local))
    return _read_folder(local, size, channels, label=str(local))


def _read_folder(root: Path, size: int, channels: int, label: str) -> RawDataset:
    if not root.is_dir():
        raise DataError(f"{label}: image folder not found (expected a directory with one sub-folder per class)")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{label}: no class sub-folders (expected <root>/<class>/<image files>)")
    images, labels, origins = [], [], []
    for c, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DataError(f"{class_dir}: empty class folder (expected at least one image)")
        for file in files:
            rel = f"{label}/{file.relative_to(root)}"
            images.append(read_image_file(file, size, channels, rel))
            labels.append(c)
            origins.append(rel)
    log.info("read %d images in %d classes from %s", len(images), len(class_dirs), label)
    return RawDataset(np.stack(images), np.asarray(labels, dtype=np.int64), [p.name for p in class_dirs], origins)


def read_image_file(file: Path, size: int, channels: int, origin: str) -> np.ndarray:
    if file.stat().st_size == 0:
        raise DataError(f"{origin}: zero-byte file (expected an image)")
    if file.suffix.lower() not in IMAGE_SUFFIXES:
        raise DataError(f"{origin}: not an image file (expected one of {', '.join(IMAGE_SUFFIXES)})")
    try:
        with Image.open(file) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise DataError(
                    f"{origin}: image of {img.width}x{img.height} pixels exceeds the {MAX_IMAGE_PIXELS:,} limit "
                    "(possible decompression bomb)"
                )
            img.load()
            return to_array(img, size, channels, origin)
    except Image.DecompressionBombError:
        raise DataError(f"{origin}: image exceeds Pillow's size limit (possible decompression bomb)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{origin}: corrupt or unreadable image ({exc})") from None


# torchvision: how to build each supported dataset's parts, and its class names
_DIGITS = [str(d) for d in range(10)]
_TORCHVISION: dict[str, tuple[list[dict], list[str] | None]] = {
    "MNIST": ([{"train": True}, {"train": False}], _DIGITS),
    "FashionMNIST": ([{"train": True}, {"train": False}], None),
    "USPS": ([{"train": True}, {"train": False}], _DIGITS),
    "SVHN": ([{"split": "train"}, {"split": "test"}], _DIGITS),
    "CIFAR10": ([{"train": True}, {"train": False}], None),
    "CIFAR100": ([{"train": True}, {"train": False}], None),
}


def read_torchvision(spec: DatasetConfig, size: int, channels: int, seed: int) -> RawDataset:
    """A torchvision built-in dataset by name, from ``path`` (downloaded beforehand, or ``download: true``).

    Its official train and test parts are pooled; ingest makes its own stratified, seeded splits.
    """
    import torchvision.datasets as tvd

    if spec.name not in _TORCHVISION:
        raise DataError(f"ingest dataset name {spec.name!r}: expected one of {', '.join(_TORCHVISION)}")
    parts, classes = _TORCHVISION[spec.name]
    cls = getattr(tvd, spec.name)
    images, labels = [], []
    for kwargs in parts:
        try:
            ds = cls(root=spec.path, download=spec.download, **kwargs)
        except (RuntimeError, FileNotFoundError, OSError) as exc:
            raise DataError(
                f"{spec.path}: torchvision {spec.name} not found or incomplete ({str(exc).splitlines()[0]}); "
                f"download it there on a machine with network access, or set download: true"
            ) from None
        if classes is None:
            classes = [str(c) for c in ds.classes]
        for i in range(len(ds)):
            img, target = ds[i]
            images.append(to_array(img, size, channels, f"{spec.path}:{spec.name}[{i}]"))
            labels.append(int(target))
    log.info("read %d images of torchvision %s from %s", len(images), spec.name, spec.path)
    return RawDataset(np.stack(images), np.asarray(labels, dtype=np.int64), list(classes))


READERS: dict[str, Callable[[DatasetConfig, int, int, int], RawDataset]] = {
    "synthetic_digits": read_synthetic,
    "sklearn_digits": read_sklearn_digits,
    "image_folder": read_image_folder,
    "torchvision": read_torchvision,
}


def read_dataset(spec: DatasetConfig, size: int, channels: int, seed: int) -> RawDataset:
    """Read a dataset with the reader its ``kind`` names, capped to ``max_per_class``."""
    ds = READERS[spec.kind](spec, size, channels, seed)
    return _cap_per_class(ds, spec.max_per_class, seed)
