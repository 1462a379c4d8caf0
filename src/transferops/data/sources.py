"""Dataset sources: listed first, decoded later.

Ingest reads a dataset in two passes so that everything cheap is checked before anything expensive and so
that memory never holds a whole dataset:

1. :func:`open_source` **lists** a dataset: class names, one label and one origin (file, URL, index) per
   image, nothing decoded. That is enough to validate the class structure and cut the splits, and it is
   where missing folders, empty classes, zero-byte and non-image files fail, with the file named.
2. :meth:`Source.decode` turns image *i* into a (C, size, size) uint8 array. Ingest calls it from a process
   pool, in shard order, streaming the results into the shard files.

The registry :data:`SOURCES` maps ``ingest.<domain>.kind`` to the function that lists it, so a new kind of
data is one function and one line. Archives and ``s3://`` prefixes are unpacked into a working folder on
disk (not into memory) and then read like a folder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from transferops.config import DatasetConfig, IngestConfig
from transferops.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
MAX_IMAGE_PIXELS = 50_000_000
"""Images larger than this are refused as possible decompression bombs."""


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


def read_image_file(file: Path, size: int, channels: int, origin: str) -> np.ndarray:
    """Decode and resize one image file; corrupt, empty, non-image and oversized files fail with one line."""
    check_image_file(file, origin)
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


def check_image_file(file: Path, origin: str) -> None:
    """What can be told without decoding: the suffix and a non-zero size."""
    if file.suffix.lower() not in IMAGE_SUFFIXES:
        raise DataError(f"{origin}: not an image file (expected one of {', '.join(IMAGE_SUFFIXES)})")
    if file.stat().st_size == 0:
        raise DataError(f"{origin}: zero-byte file (expected an image)")


# ------------------------------------------------------------------------------------------------ sources
class Source:
    """A listed dataset: class names, and per image a label, an origin and a way to decode it.

    ``native_size`` / ``colour`` describe the images as stored (None when the source renders at any geometry,
    as the synthetic digits do); ``ingest.image_size: auto`` and ``ingest.channels: auto`` are resolved from
    them. Subclasses implement :meth:`_decode` on their own item ids; :meth:`subset` keeps the ids, so a
    subset decodes the same images.
    """

    def __init__(
        self,
        classes: list[str],
        labels: np.ndarray,
        origins: list[str],
        where: str,
        native_size: int | None = None,
        colour: bool | None = None,
    ) -> None:
        self.classes = list(classes)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.origins = list(origins)
        self.where = where
        self.native_size, self.colour = native_size, colour
        self.ids = np.arange(len(self.labels))

    def __len__(self) -> int:
        return len(self.labels)

    def decode(self, i: int, size: int, channels: int) -> np.ndarray:
        """Image ``i`` as (channels, size, size) uint8."""
        return self._decode(int(self.ids[i]), size, channels)

    def _decode(self, item: int, size: int, channels: int) -> np.ndarray:
        raise NotImplementedError

    def subset(self, keep: np.ndarray, labels: np.ndarray | None = None, classes: list[str] | None = None) -> Source:
        """The images ``keep`` (optionally relabelled), decoding exactly as before."""
        import copy

        out = copy.copy(self)
        out.ids = self.ids[keep]
        out.labels = (self.labels if labels is None else labels)[keep]
        out.origins = [self.origins[i] for i in keep]
        out.classes = list(classes if classes is not None else self.classes)
        return out


class SyntheticSource(Source):
    """Printed digits rendered on demand (see :mod:`transferops.data.synthetic`)."""

    def __init__(self, spec: DatasetConfig, seed: int, where: str) -> None:
        from transferops.data.synthetic import DIGITS, load_fonts

        self.digit = np.repeat(np.arange(10, dtype=np.int64), spec.samples_per_class)
        super().__init__(DIGITS, self.digit, [f"synthetic[{i}]" for i in range(len(self.digit))], where)
        self.seed, self.fonts_dir = seed, spec.fonts_dir
        fonts = load_fonts(self.fonts_dir)
        log.info("%s: %d printed digits per class from %d fonts", where, spec.samples_per_class, len(fonts))

    def _decode(self, item: int, size: int, channels: int) -> np.ndarray:
        from transferops.data.synthetic import render_digit

        img = render_digit(item, int(self.digit[item]), size, self.seed, self.fonts_dir)
        return np.repeat(img[None], channels, axis=0)


class ArraySource(Source):
    """Images already in memory (small built-in datasets): uint8 arrays (N, H, W) or (N, H, W, 3), or PIL."""

    def __init__(self, images: Any, classes, labels, origins, where, native_size, colour) -> None:
        super().__init__(classes, labels, origins, where, native_size, colour)
        self.images = images

    def _decode(self, item: int, size: int, channels: int) -> np.ndarray:
        img = self.images[item]
        if not isinstance(img, Image.Image):
            img = Image.fromarray(np.asarray(img))
        return to_array(img, size, channels, f"{self.where}[{item}]")


class FileSource(Source):
    """Image files on local disk (a folder, or an unpacked archive or S3 prefix)."""

    def __init__(self, files: list[Path], classes, labels, origins, where, native_size, colour) -> None:
        super().__init__(classes, labels, origins, where, native_size, colour)
        self.files = files
        self.item_origins = list(origins)  # per item, whatever subset is taken later

    def _decode(self, item: int, size: int, channels: int) -> np.ndarray:
        return read_image_file(self.files[item], size, channels, self.item_origins[item])


class TorchvisionSource(Source):
    """A torchvision built-in dataset (its official parts pooled): items are (part, index) pairs."""

    def __init__(self, parts: list, where: str, **kwargs) -> None:
        self.parts = parts
        self.items = [(p, j) for p, ds in enumerate(parts) for j in range(len(ds))]
        super().__init__(where=where, **kwargs)

    def _decode(self, item: int, size: int, channels: int) -> np.ndarray:
        p, j = self.items[item]
        img, _ = self.parts[p][j]
        return to_array(img, size, channels, f"{self.where}[{item}]")


# ------------------------------------------------------------------------------------------------ listing
def _peek_geometry(files: list[Path], limit: int = 32) -> tuple[int, bool]:
    """Median longer side and whether any image is in colour, from up to ``limit`` files spread over the list."""
    picks = files[:: max(1, len(files) // limit)][:limit]
    sizes, colour = [], False
    for f in picks:
        try:
            with Image.open(f) as img:
                sizes.append(max(img.size))
                if img.mode not in ("1", "L", "LA", "I", "I;16", "F"):
                    rgb = np.asarray(img.convert("RGB").reduce(max(1, min(img.size) // 32)), dtype=np.int16)
                    colour = colour or bool(np.abs(rgb - rgb.mean(axis=2, keepdims=True)).max() > 2)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            continue  # the decode pass names the bad file
    return (int(np.median(sizes)) if sizes else 0), colour


def list_synthetic(spec: DatasetConfig, ing: IngestConfig, seed: int, work: Path, where: str) -> Source:
    return SyntheticSource(spec, seed, where)


def list_sklearn_digits(spec: DatasetConfig, ing: IngestConfig, seed: int, work: Path, where: str) -> Source:
    """scikit-learn's bundled handwritten digits (1,797 images, 8x8, values 0-16)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    raw = np.clip(bunch.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    classes = [str(c) for c in bunch.target_names]
    origins = [f"sklearn_digits[{i}]" for i in range(len(raw))]
    return ArraySource(raw, classes, bunch.target, origins, where, native_size=8, colour=False)


def list_image_folder(spec: DatasetConfig, ing: IngestConfig, seed: int, work: Path, where: str) -> Source:
    """A tree ``root/<class>/<image>``; ``root`` may also be a .zip/.tar archive or an s3:// prefix, which is
    unpacked into ``work`` first (bounded by ``ingest.archive_max_gib`` / ``archive_max_entries``)."""
    from transferops.data import archive

    path = spec.path
    if path.startswith("s3://"):
        from transferops.data.s3 import download_prefix

        work.mkdir(parents=True, exist_ok=True)
        download_prefix(path, work)
        return _list_folder(work, path, where)
    local = Path(path)
    if local.is_file() and archive.is_archive(local):
        work.mkdir(parents=True, exist_ok=True)
        return _list_folder(archive.safe_extract(local, work, archive.Limits.from_config(ing)), str(local), where)
    return _list_folder(local, str(local), where)


def _list_folder(root: Path, label: str, where: str) -> Source:
    if not root.is_dir():
        raise DataError(f"{where}: {label}: image folder not found (expected a folder with one sub-folder per class)")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX")))
    if not class_dirs:
        raise DataError(f"{where}: {label}: no class sub-folders (expected <root>/<class>/<image files>)")
    files, labels, origins = [], [], []
    for c, class_dir in enumerate(class_dirs):
        found = sorted(p for p in class_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not found:
            raise DataError(f"{where}: {label}/{class_dir.name}: empty class folder (expected at least one image)")
        for file in found:
            origin = f"{label}/{file.relative_to(root)}"
            check_image_file(file, origin)
            files.append(file)
            labels.append(c)
            origins.append(origin)
    size, colour = _peek_geometry(files)
    log.info("%s: %d images in %d classes from %s", where, len(files), len(class_dirs), label)
    classes = [p.name for p in class_dirs]
    return FileSource(files, classes, np.asarray(labels), origins, where, size or None, colour)


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


def list_torchvision(spec: DatasetConfig, ing: IngestConfig, seed: int, work: Path, where: str) -> Source:
    """A torchvision built-in dataset by name, from ``path`` (downloaded beforehand, or ``download: true``).

    Its official train and test parts are pooled; ingest makes its own stratified, seeded splits.
    """
    import torchvision.datasets as tvd

    if spec.name not in _TORCHVISION:
        raise DataError(f"{where}: dataset name {spec.name!r}: expected one of {', '.join(_TORCHVISION)}")
    kinds, classes = _TORCHVISION[spec.name]
    parts = []
    for kwargs in kinds:
        try:
            parts.append(getattr(tvd, spec.name)(root=spec.path, download=spec.download, **kwargs))
        except (RuntimeError, FileNotFoundError, OSError) as exc:
            raise DataError(
                f"{spec.path}: torchvision {spec.name} not found or incomplete ({str(exc).splitlines()[0]}); "
                f"download it there on a machine with network access, or set download: true"
            ) from None
    if classes is None:
        classes = [str(c) for c in parts[0].classes]
    labels = np.concatenate([np.asarray(_targets(ds), dtype=np.int64) for ds in parts])
    first, _ = parts[0][0]
    origins = [f"{spec.path}:{spec.name}[{i}]" for i in range(len(labels))]
    log.info("%s: %d images of torchvision %s from %s", where, len(labels), spec.name, spec.path)
    return TorchvisionSource(
        parts,
        where,
        classes=classes,
        labels=labels,
        origins=origins,
        native_size=max(first.size),
        colour=first.mode not in ("L", "1"),
    )


def _targets(ds) -> list[int]:
    for attr in ("targets", "labels"):
        if hasattr(ds, attr):
            return [int(t) for t in getattr(ds, attr)]
    return [int(ds[i][1]) for i in range(len(ds))]


SOURCES: dict[str, Callable[[DatasetConfig, IngestConfig, int, Path, str], Source]] = {
    "synthetic_digits": list_synthetic,
    "sklearn_digits": list_sklearn_digits,
    "image_folder": list_image_folder,
    "torchvision": list_torchvision,
}


def check_path(spec: DatasetConfig, key: str) -> None:
    """Fail at once, before any data is read, when a configured path cannot exist."""
    if spec.kind == "synthetic_digits" and spec.fonts_dir and not Path(spec.fonts_dir).is_dir():
        raise DataError(f"{key}.fonts_dir: {spec.fonts_dir}: not found (expected a folder of .ttf/.otf fonts)")
    if spec.kind == "image_folder":
        if spec.path.startswith("s3://"):
            from transferops.data.s3 import split_url

            split_url(spec.path)
        elif not Path(spec.path).exists():
            raise DataError(
                f"{key}.path: {spec.path}: not found (expected a folder with one sub-folder per class, "
                "a .zip/.tar archive of one, or an s3://bucket/prefix)"
            )
    if spec.kind == "torchvision" and not spec.download and not Path(spec.path).is_dir():
        raise DataError(f"{key}.path: {spec.path}: not found (download {spec.name} there, or set download: true)")


def open_source(spec: DatasetConfig, ing: IngestConfig, seed: int, work: Path, where: str) -> Source:
    """List a dataset with the function its ``kind`` names, capped to ``max_per_class`` images per class."""
    source = SOURCES[spec.kind](spec, ing, seed, work, where)
    if spec.max_per_class <= 0:
        return source
    rng = np.random.default_rng([seed, 0xCA9])
    keep = [
        np.sort(rng.permutation(np.flatnonzero(source.labels == c))[: spec.max_per_class])
        for c in range(len(source.classes))
    ]
    return source.subset(np.sort(np.concatenate(keep)))


def apply_class_map(source: Source, class_map: dict[str, str], reference: list[str]) -> Source:
    """Rename classes with ``class_map``; when the names then equal the reference set, use its order."""
    names = [class_map.get(c, c) for c in source.classes]
    if len(set(names)) != len(names):
        raise DataError(f"ingest.class_map maps two target classes onto one name: {names}")
    everything = np.arange(len(source))
    if set(names) == set(reference) and names != reference:
        order = np.array([reference.index(n) for n in names])
        return source.subset(everything, labels=order[source.labels], classes=list(reference))
    return source.subset(everything, classes=names)


def load_all(source: Source, size: int, channels: int) -> np.ndarray:
    """Every image of a (small) source in memory, in order: for tests and quick looks, not for ingest."""
    return np.stack([source.decode(i, size, channels) for i in range(len(source))])
