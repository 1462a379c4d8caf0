"""Splits, shards and the manifest: how an ingested dataset is laid out on disk, written and read.

A dataset directory holds, per split, a few ``<split>-NNN.images.npy`` / ``.labels.npy`` shard pairs and one
``manifest.json`` (class names, image shape, counts per split and class, the sha256 of every shard, and a
``version`` hash over all of them). ``.npy`` is read with ``allow_pickle=False``: loading data can never run
code, and the bytes written are a pure function of the data, so the same data gives the same version.

Neither side holds a dataset in memory. :func:`write_dataset` decodes images in a process pool and streams
them into each shard file as they arrive (header first, then the pixels, hashing as it writes), so the peak
memory is a window of images in flight whatever the dataset size. :func:`load_split` verifies each shard's
sha256 by streaming it from disk, then opens it memory-mapped; a :class:`ShardedArray` reads the rows a
batch needs from the shard files (``preadv`` into the batch, which maps no pages; see :class:`MappedShard`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import mmap
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from transferops.config import SplitConfig
from transferops.errors import DataError
from transferops.lineage import file_sha256

if TYPE_CHECKING:
    from transferops.data.sources import Source

log = logging.getLogger(__name__)

SPLITS = ("labeled", "unlabeled", "val", "test")
MANIFEST = "manifest.json"


# ------------------------------------------------------------------------------------------------ splits
def stratified_split(
    labels: np.ndarray, classes: Sequence[str], split: SplitConfig, seed: int, where: str = "dataset"
) -> dict[str, np.ndarray]:
    """Cut indices per class into test / val / labeled / unlabeled; seeded, sorted, disjoint.

    Per class: ``round(test_fraction * n)`` test images, then ``val_per_class`` val images, then
    ``labels_per_class`` labelled ones (all when null), the rest unlabelled. ``where`` names the dataset in
    errors (domain and path).
    """
    rng = np.random.default_rng([seed, 0x5B1])
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for c, name in enumerate(classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = len(idx)
        n_test = int(round(split.test_fraction * n))
        n_val = min(split.val_per_class, n - n_test)
        rest = n - n_test - n_val
        n_lab = rest if split.labels_per_class is None else min(split.labels_per_class, rest)
        if split.labels_per_class and n_lab < split.labels_per_class:
            raise DataError(
                f"{where}: class {name!r} has {n} images, too few for {n_test} test + {n_val} val + "
                f"{split.labels_per_class} labelled (lower split.labels_per_class, val_per_class or test_fraction)"
            )
        cuts = np.cumsum([n_test, n_val, n_lab])
        parts["test"].append(idx[: cuts[0]])
        parts["val"].append(idx[cuts[0] : cuts[1]])
        parts["labeled"].append(idx[cuts[1] : cuts[2]])
        parts["unlabeled"].append(idx[cuts[2] :])
    return {s: np.sort(np.concatenate(v)).astype(np.int64) for s, v in parts.items()}


# ------------------------------------------------------------------------------------------------ writing
def npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """The exact header ``np.save`` writes for an array of this shape and dtype (format 1.0)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


class ShardWriter:
    """Writes one ``.npy`` file row by row, hashing as it goes: byte-identical to ``np.save`` of all rows."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype = np.dtype(np.uint8)) -> None:
        self.path, self.shape, self.dtype = path, shape, np.dtype(dtype)
        self.rows = 0
        self.hash = hashlib.sha256()
        self.file = open(path, "wb")
        self._write(npy_header(shape, self.dtype))

    def _write(self, data: bytes | memoryview) -> None:
        self.file.write(data)
        self.hash.update(data)

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.shape[1:] or self.rows + len(rows) > self.shape[0]:
            raise ValueError(f"{self.path}: rows of shape {rows.shape} do not fit {self.shape} at row {self.rows}")
        self._write(memoryview(rows).cast("B"))
        self.rows += len(rows)

    def close(self) -> str:
        """Flush, fsync and return the file's sha256."""
        if self.rows != self.shape[0]:
            raise ValueError(f"{self.path}: {self.rows} rows written, {self.shape[0]} declared")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return self.hash.hexdigest()


def _save_small(path: Path, arr: np.ndarray) -> str:
    writer = ShardWriter(path, arr.shape, arr.dtype)
    writer.append(arr)
    return writer.close()


_WORK: tuple[Source, int, int] | None = None
"""The source a forked decode worker reads (set before the pool forks, so nothing big is pickled)."""


def _decode_chunk(indices: list[int]) -> tuple[np.ndarray, list[str]]:
    source, size, channels = _WORK  # type: ignore[misc]
    images = np.stack([source.decode(i, size, channels) for i in indices])
    return images, [hashlib.sha1(img.tobytes()).hexdigest() for img in images]


def workers_for(requested: int) -> int:
    """``ingest.workers``: 0 = every CPU this process may use."""
    return requested if requested > 0 else max(1, len(os.sched_getaffinity(0)))


def decode_stream(
    source: Source, order: np.ndarray, size: int, channels: int, workers: int, chunk: int = 64
) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Decoded images of ``order`` in that order, ``chunk`` at a time, from ``workers`` processes.

    At most ``2 * workers`` chunks are in flight, which bounds memory whatever the dataset size.
    """
    global _WORK
    chunks = [order[i : i + chunk].tolist() for i in range(0, len(order), chunk)]
    if workers <= 1 or len(chunks) <= 1:
        _WORK = (source, size, channels)
        try:
            yield from map(_decode_chunk, chunks)
        finally:
            _WORK = None
        return
    _WORK = (source, size, channels)
    try:
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            pending: deque[Future] = deque()
            todo = iter(chunks)
            for c in todo:
                pending.append(pool.submit(_decode_chunk, c))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                yield pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(_decode_chunk, nxt))
    finally:
        _WORK = None


def write_dataset(
    out_dir: Path,
    source: Source,
    splits: dict[str, np.ndarray],
    shard_size: int,
    size: int,
    channels: int,
    workers: int = 1,
    extra: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """Decode ``source`` into shards and ``manifest.json`` under ``out_dir``; returns the manifest and the sha1
    of every image (by source index, for duplicate and leakage checks)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shape = (channels, size, size)
    manifest: dict[str, Any] = {"classes": list(source.classes), "image_shape": list(shape), "splits": {}}
    plan = []  # (split, shard index, indices) in writing order
    for name in SPLITS:
        idx = splits.get(name, np.empty(0, dtype=np.int64))
        plan += [(name, s, idx[start : start + shard_size]) for s, start in enumerate(range(0, len(idx), shard_size))]
    order = np.concatenate([p[2] for p in plan]) if plan else np.empty(0, dtype=np.int64)
    hashes = np.empty(len(source), dtype=object)
    stream = decode_stream(source, order, size, channels, workers_for(workers))
    buffered: list[np.ndarray] = []
    bar = tqdm(total=len(order), desc=f"ingest {out_dir.name}", unit="img", disable=not sys.stderr.isatty())
    done = 0
    shards: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for name, s, sel in plan:
        stem = f"{name}-{s:03d}"
        writer = ShardWriter(out_dir / f"{stem}.images.npy", (len(sel), *shape))
        need = len(sel)
        while need:
            if not buffered:
                images, digests = next(stream)
                hashes[order[done : done + len(images)]] = digests
                done += len(images)
                bar.update(len(images))
                buffered.append(images)
            head = buffered[0]
            take = min(need, len(head))
            writer.append(head[:take])
            buffered[0] = head[take:]
            if not len(buffered[0]):
                buffered.pop(0)
            need -= take
        shards[name].append(
            {
                "images": f"{stem}.images.npy",
                "labels": f"{stem}.labels.npy",
                "count": int(len(sel)),
                "sha256": {
                    "images": writer.close(),
                    "labels": _save_small(out_dir / f"{stem}.labels.npy", source.labels[sel].astype(np.int64)),
                },
            }
        )
    bar.close()
    for name in SPLITS:
        idx = splits.get(name, np.empty(0, dtype=np.int64))
        counts = np.bincount(source.labels[idx], minlength=len(source.classes))
        manifest["splits"][name] = {
            "count": int(len(idx)),
            "per_class": {c: int(n) for c, n in zip(source.classes, counts, strict=True)},
            "shards": shards[name],
        }
    manifest["version"] = _version(manifest)
    manifest.update(extra or {})
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest, hashes


def _version(manifest: dict[str, Any]) -> str:
    core = {k: manifest[k] for k in ("classes", "image_shape", "splits")}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ reading
def read_manifest(data_dir: Path) -> dict[str, Any]:
    """The manifest of an ingested dataset; a clear error when ingest has not run there."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: dataset manifest not found (run `transferops ingest` first)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: corrupt manifest ({exc})") from None


class MappedShard(np.ndarray):
    """A read-only ``.npy`` shard mapped into memory, which also knows its file (path and data offset).

    A mapped page that was read counts towards the process's resident memory until the kernel needs it back;
    over an epoch on a dataset larger than memory that is the whole dataset. Worse, a fault on a file the page
    cache holds in large folios (a file just written, as ingest leaves its shards) maps the whole folio: 64
    random rows of 12 KiB made 94 MiB resident. :meth:`read_rows` therefore reads the rows a batch needs
    through the file descriptor (``preadv`` straight into the batch), which maps nothing; the pages stay in
    the page cache, which is not this process's memory.
    """

    path: str | None = None
    """None on a view or a copy (a slice, an unpickled array): those are read by indexing."""
    data_offset: int = 0

    def read_rows(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Rows ``rows`` (sorted, unique) into ``out`` (len(rows), *row shape), one ``preadv`` per contiguous
        run of rows."""
        row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, len(rows)], strict=True):
                view = memoryview(out[lo:hi]).cast("B")
                offset = self.data_offset + int(rows[lo]) * row_bytes
                while len(view):
                    got = os.preadv(fd, [view], offset)
                    if got <= 0:
                        raise DataError(f"{self.path}: shard shorter than its header says (truncated?)")
                    view, offset = view[got:], offset + got
        finally:
            os.close(fd)


def open_npy(path: Path) -> MappedShard:
    """Map a ``.npy`` file read-only (``allow_pickle`` is never needed: object arrays are refused)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
        if dtype.hasobject or fortran:
            raise DataError(f"{path}: not a plain C-ordered numeric array")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    count = int(np.prod(shape))
    arr = np.frombuffer(mm, dtype=dtype, count=count, offset=offset).reshape(shape).view(MappedShard)
    arr.path, arr.data_offset = str(path), offset
    return arr


class ShardedArray:
    """Rows of several arrays (memory-mapped shards) seen as one read-only array.

    Supports ``len``, ``shape``, ``dtype``, integer and slice indexing and gathering by an index array, which
    reads only the rows asked for (in file order, for locality) and returns a fresh numpy array. Rows of a
    mapped shard are read through its file descriptor, not the mapping (see :class:`MappedShard`), so a gather
    adds nothing to resident memory but the batch it returns.
    """

    def __init__(self, parts: Sequence[np.ndarray], row_shape: tuple[int, ...] | None = None, dtype=None) -> None:
        self.parts = [p for p in parts if len(p)]
        if not self.parts and row_shape is None:
            raise ValueError("an empty ShardedArray needs its row shape")
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        first = self.parts[0] if self.parts else None
        self.row_shape = tuple(first.shape[1:]) if first is not None else tuple(row_shape or ())
        self.dtype = first.dtype if first is not None else np.dtype(dtype or np.uint8)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.row_shape)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Rows ``indices`` (any order, repeats allowed) as a new array."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), *self.row_shape), dtype=self.dtype)
        if not len(indices):
            return out
        if indices.min() < 0 or indices.max() >= len(self):
            raise IndexError(f"index out of range for {len(self)} rows")
        order = np.argsort(indices, kind="stable")
        sorted_idx = indices[order]
        part_of = np.searchsorted(self.offsets, sorted_idx, side="right") - 1
        for p in np.unique(part_of):
            sel = part_of == p
            local = sorted_idx[sel] - self.offsets[p]
            part = self.parts[p]
            if isinstance(part, MappedShard) and part.path is not None and hasattr(os, "preadv"):
                rows, inverse = np.unique(local, return_inverse=True)
                buf = np.empty((len(rows), *self.row_shape), dtype=self.dtype)
                part.read_rows(rows, buf)
                out[order[sel]] = buf[inverse]
            else:
                out[order[sel]] = part[local]
        return out

    def __getitem__(self, key):
        if isinstance(key, slice):
            return self.take(np.arange(len(self))[key])
        if isinstance(key, int | np.integer):
            return self.take(np.array([key]))[0]
        return self.take(np.asarray(key))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self.take(np.arange(len(self)))
        return whole if dtype is None else whole.astype(dtype)


@dataclass
class Split:
    """One split: images (N, C, H, W) uint8 as a :class:`ShardedArray` of memory maps (or any array, e.g.
    cached features), and labels (N,) int64 in memory."""

    images: Any
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> Split:
        """The first ``n`` images (e.g. 0 for an empty split of the same shape)."""
        return Split(
            ShardedArray([np.asarray(self.images[:n])], self.images.shape[1:], self.images.dtype), self.labels[:n]
        )


def load_split(data_dir: Path, split: str, verify: bool = True) -> Split:
    """Open one split memory-mapped, after checking every shard against the sha256 in the manifest.

    Verification streams each file once from disk (the page cache then serves the training reads); the
    images are never copied into this process's memory as a whole.
    """
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    if split not in manifest["splits"]:
        raise DataError(f"{data_dir / MANIFEST}: no split {split!r} (expected one of {', '.join(SPLITS)})")
    images, labels = [], []
    for shard in manifest["splits"][split]["shards"]:
        for key in ("images", "labels"):
            path = data_dir / shard[key]
            if not path.is_file():
                raise DataError(f"{path}: shard missing (re-run ingest or `dvc pull`)")
            if verify and file_sha256(path) != shard["sha256"][key]:
                raise DataError(f"{path}: sha256 does not match {MANIFEST} (corrupt or modified shard)")
        images.append(open_npy(data_dir / shard["images"]))
        labels.append(np.load(data_dir / shard["labels"], allow_pickle=False))
    shape = tuple(manifest["image_shape"])
    lab = np.concatenate(labels) if labels else np.empty(0, np.int64)
    return Split(ShardedArray(images, shape, np.uint8), lab.astype(np.int64))
