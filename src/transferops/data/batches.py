"""Batches for training: stateless seeded sampling from memory-mapped shards, and a prefetcher.

The batch drawn at step ``s`` is a pure function of (seed, stream, s): a run resumed from a checkpoint at
step ``s`` draws exactly the batches the uninterrupted run would have drawn, with no sampler state to save.
Under data parallelism each rank takes its own slice of that same global batch, so the global batch does not
depend on the number of processes either.

Batches stay uint8 until they are on the device (four times less to copy); :class:`Prefetcher` gathers the
next batches from the shards in a background thread, into pinned memory when the device is a GPU, so the
copy can overlap compute (``non_blocking=True``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np
import torch

from transferops.data.augment import generator
from transferops.data.shards import ShardedArray, Split

Batch = tuple[torch.Tensor, torch.Tensor]


def _rows(images) -> ShardedArray:
    if isinstance(images, ShardedArray):
        return images
    arr = np.asarray(images)
    return ShardedArray([arr], arr.shape[1:], arr.dtype)


class BatchStream:
    """Endless shuffled batches over one split, indexable by global step.

    Each pass over the data is a fresh seeded permutation; when the split is smaller than the batch size a
    batch is the whole split. ``rank``/``world`` select this process's slice of the global batch.
    """

    def __init__(self, split: Split, batch_size: int, seed: int, stream: int = 0, rank: int = 0, world: int = 1):
        if len(split) == 0:
            raise ValueError("cannot draw batches from an empty split")
        self.images = _rows(split.images)
        self.labels = torch.from_numpy(np.asarray(split.labels, dtype=np.int64))
        self.batch_size = min(batch_size, len(split))
        self.per_pass = len(split) // self.batch_size
        self.seed, self.stream, self.rank, self.world = seed, stream, rank, world
        self._perm_pass, self._perm = -1, None

    @property
    def steps_per_pass(self) -> int:
        """Steps that make one pass over the split (a partial last batch is dropped)."""
        return self.per_pass

    def indices(self, step: int) -> torch.Tensor:
        """Rows of the global batch at ``step`` that belong to this rank."""
        p, i = divmod(step, self.per_pass)
        if p != self._perm_pass:
            self._perm = torch.randperm(len(self.labels), generator=generator(self.seed, self.stream, p))
            self._perm_pass = p
        idx = self._perm[i * self.batch_size : (i + 1) * self.batch_size]
        return idx[self.rank :: self.world]

    def batch(self, step: int) -> Batch:
        """Images as stored (uint8, or float for cached features) and labels, for global step ``step``."""
        idx = self.indices(step)
        return torch.from_numpy(self.images.take(idx.numpy())), self.labels[idx]


BALANCED_STREAM_KEY = 7919
"""Mixed into a class-balanced stream's generator keys, so its draws differ from a plain stream's."""


class BalancedBatchStream(BatchStream):
    """Class-balanced batches: every row picks a class uniformly among those present, then an image of that
    class uniformly (with replacement), so a 10:1 imbalanced labelled split is seen ~1:1 per batch.

    Like :class:`BatchStream`, the batch at ``step`` is a pure function of (seed, stream, step); the epoch
    length (:attr:`steps_per_pass`) stays that of a plain pass over the split.
    """

    def __init__(self, split: Split, batch_size: int, seed: int, stream: int = 0, rank: int = 0, world: int = 1):
        super().__init__(split, batch_size, seed, stream, rank, world)
        order = torch.argsort(self.labels, stable=True)
        classes, counts = torch.unique_consecutive(self.labels[order], return_counts=True)
        self._order, self._counts = order, counts
        self._starts = torch.cumsum(counts, 0) - counts
        self.classes = classes

    def indices(self, step: int) -> torch.Tensor:
        g = generator(self.seed, self.stream, BALANCED_STREAM_KEY, step)
        cls = torch.randint(len(self._counts), (self.batch_size,), generator=g)
        within = (torch.rand(self.batch_size, generator=g) * self._counts[cls]).long()
        idx = self._order[self._starts[cls] + torch.minimum(within, self._counts[cls] - 1)]
        return idx[self.rank :: self.world]


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1] (models normalise internally); float inputs, such as cached
    features, pass through unchanged."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


def iterate(split: Split, batch_size: int) -> Iterator[Batch]:
    """Ordered, un-augmented float batches for evaluation and feature extraction, read a batch at a time."""
    images = _rows(split.images)
    labels = torch.from_numpy(np.asarray(split.labels, dtype=np.int64))
    for start in range(0, len(labels), batch_size):
        rows = images.take(np.arange(start, min(start + batch_size, len(labels))))
        yield to_float(torch.from_numpy(rows)), labels[start : start + batch_size]


class Prefetcher:
    """Runs ``fetch(step)`` for steps ``start..stop-1`` in a background thread, ``depth`` steps ahead.

    ``fetch`` returns a dict of CPU tensors (one batch per stream); with ``pin`` they are copied into page-
    locked memory so the training loop's ``.to(device, non_blocking=True)`` is asynchronous. Because a batch
    is a pure function of its step, prefetching changes nothing in what is drawn. ``depth`` 0 fetches in the
    caller's thread.
    """

    def __init__(self, fetch: Callable[[int], dict[str, Batch]], start: int, stop: int, depth: int, pin: bool):
        self.fetch, self.next_step, self.stop_step, self.pin = fetch, start, stop, pin
        self.depth = depth
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._halt = threading.Event()
        self._thread = None
        if depth > 0 and start < stop:
            self._thread = threading.Thread(target=self._work, args=(start,), daemon=True, name="prefetch")
            self._thread.start()

    def _load(self, step: int) -> dict[str, Batch]:
        out = self.fetch(step)
        if self.pin:
            out = {k: (x.pin_memory(), y.pin_memory()) for k, (x, y) in out.items()}
        return out

    def _work(self, start: int) -> None:
        for step in range(start, self.stop_step):
            try:
                item = (step, self._load(step), None)
            except BaseException as exc:  # handed to the consumer, raised there
                item = (step, None, exc)
            while not self._halt.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if self._halt.is_set() or item[2] is not None:
                return

    def get(self, step: int) -> dict[str, Batch]:
        """The batches of ``step`` (steps must be asked for in order)."""
        if self._thread is None:
            return self._load(step)
        got, batches, error = self._queue.get()
        if error is not None:
            raise error
        if got != step:
            raise RuntimeError(f"prefetcher out of order: asked for step {step}, got {got}")
        return batches

    def close(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
