"""Benchmarks of scale: how fast the training path runs on this device, and what memory ingest and training take.

``transferops benchmark throughput`` times, in one process on whatever device is present, the project's
Trainer (ingested shards on disk, memory-mapped, real augmentation, prefetching, autocast) next to a bare
training step of the same model and precision on tensors already on the device: their ratio says whether the
data path keeps the device busy. ``--linear-probe`` adds the per-epoch time of a linear probe on cached
features against running the frozen backbone every step.

``transferops benchmark data`` generates (or reads) an ImageFolder of JPEGs, ingests it and trains one epoch on
it, each in its own process, and reports images/s and the peak resident memory of each (the main process and
its largest decode worker), plus the loader's images/s without a model.

Both print figures and assert nothing; neither needs MLflow, DVC or kfp (a bare GPU machine has torch,
torchvision, numpy, pillow and pyyaml only).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import resource
import statistics
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ throughput
@dataclass(frozen=True)
class ThroughputSpec:
    model: str = "smallcnn"
    image_size: int = 28
    """The side the network sees (model.input_size)."""
    stored_size: int = 0
    """The side images are stored at (0: image_size; crop_flip crops image_size out of it)."""
    channels: int = 3
    batch_size: int = 64
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    augment: str = "affine"
    steps: int = 50
    """Timed steps (after the warm-up epoch)."""
    width: int = 32
    repeats: int = 3
    """Bare step and Trainer are timed alternately this many times; the report takes each one's median, so a
    burst of other work on a shared machine moves one sample, not the ratio."""


class _NoiseSource:
    """Random images, image ``i`` seeded by ``i`` (a stand-in dataset of any size for shards on disk)."""

    def __init__(self, n: int, classes: int = 10) -> None:
        self.classes = [str(c) for c in range(classes)]
        self.labels = np.arange(n) % classes

    def __len__(self) -> int:
        return len(self.labels)

    def decode(self, i: int, size: int, channels: int) -> np.ndarray:
        rng = np.random.default_rng(i)
        side = max(2, -(-size // 8))  # ceil: 8x blocks cover any size (28 px -> 4 blocks -> 32, cut to 28)
        small = rng.integers(0, 256, (channels, side, side), dtype=np.uint8)
        return np.repeat(np.repeat(small, 8, axis=1), 8, axis=2)[:, :size, :size].copy()


def _bare_step_img_s(model, spec: ThroughputSpec, device, steps: int) -> float:
    """Images/s of forward + backward + optimiser step on a batch already on the device."""
    import torch

    from transferops.models.inference import autocast

    x = torch.rand(spec.batch_size, spec.channels, spec.image_size, spec.image_size, device=device)
    y = torch.randint(0, model.num_classes, (spec.batch_size,), device=device)
    if spec.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if spec.compile:
        model.backbone.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=spec.precision == "fp16" and device.type == "cuda")
    model.train()

    def step() -> None:
        with autocast(device, spec.precision):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(max(3, steps // 4)):  # warm-up (compilation, cuDNN autotuning)
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * spec.batch_size / (time.perf_counter() - t0)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(spec: ThroughputSpec, device_name: str = "auto", linear_probe: bool = False) -> dict[str, Any]:
    """The Trainer's images/s on ingested shards next to the bare step's, in this process."""
    import torch

    from transferops.config import TrainConfig
    from transferops.data.shards import load_split, write_dataset
    from transferops.models import create_model
    from transferops.training.loop import Trainer, TrainRun
    from transferops.training.seeding import resolve_device, seed_everything
    from transferops.transfer import Strategy

    device = resolve_device(device_name)
    seed_everything(0, deterministic=False)
    stored = spec.stored_size or spec.image_size
    n = spec.batch_size * (spec.steps + 4)
    with tempfile.TemporaryDirectory(prefix="transferops-throughput-") as tmp:
        source = _NoiseSource(n)
        write_dataset(Path(tmp), source, {"labeled": np.arange(n)}, 4096, stored, spec.channels, workers=0)
        split = load_split(Path(tmp), "labeled")

        def model():
            return create_model(spec.model, 10, "none", spec.channels, spec.width, 0.0, spec.image_size).to(device)

        from transferops.data.batches import BatchStream

        cfg = TrainConfig(
            epochs=2,
            steps_per_epoch=spec.steps,
            batch_size=spec.batch_size,
            precision=spec.precision,
            channels_last=spec.channels_last,
            compile=spec.compile,
            augment=spec.augment,
            select_best=False,
        )
        bare, trained, gpu_peak = [], [], 0.0
        for _ in range(max(1, spec.repeats)):
            bare.append(_bare_step_img_s(model(), spec, device, spec.steps))
            stream = BatchStream(split, spec.batch_size, 0)
            fit = Trainer(model(), Strategy(), cfg, {"labeled": stream}, split.head(0), TrainRun(0, device)).fit()
            warm = fit.timing[-1]  # the second epoch: the first warms up (compilation, autotuning, page cache)
            trained.append(warm["throughput_img_s"])
            gpu_peak = max(gpu_peak, warm.get("gpu_memory_peak_gb", 0.0))
        report = {
            "device": _device_name(device),
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"),
            **asdict(spec),
            "trainer_img_s": round(statistics.median(trained), 1),
            "bare_step_img_s": round(statistics.median(bare), 1),
            "ratio": round(statistics.median(trained) / statistics.median(bare), 3),
            "trainer_img_s_runs": [round(v, 1) for v in trained],
            "bare_step_img_s_runs": [round(v, 1) for v in bare],
            "gpu_memory_peak_gb": round(gpu_peak, 2) or None,
        }
        if linear_probe:
            report.update(_linear_probe(spec, split, device, model))
    return report


def _linear_probe(spec: ThroughputSpec, split, device, make_model) -> dict[str, float]:
    """Seconds per epoch of a linear probe: the frozen backbone every step, or the head on cached features."""
    from transferops.config import LinearProbeConfig, TrainConfig
    from transferops.data.batches import BatchStream
    from transferops.training.loop import Trainer, TrainRun
    from transferops.transfer import TransferContext, get_strategy

    out = {}
    for cached in (False, True):
        model = make_model()
        strategy = get_strategy("linear_probe", LinearProbeConfig(cache_features=cached))
        strategy.prepare(model, TransferContext(10, True, None, device))
        data, val = {"labeled": split}, split.head(0)
        t0 = time.perf_counter()
        module = model
        if cached:
            module, data, val = strategy.feature_space(model, data, val, device)
        cache_seconds = time.perf_counter() - t0
        cfg = TrainConfig(
            epochs=2,
            batch_size=spec.batch_size,
            precision=spec.precision,
            augment="none" if cached else spec.augment,
            select_best=False,
        )
        stream = BatchStream(data["labeled"], spec.batch_size, 0)
        fit = Trainer(module, strategy, cfg, {"labeled": stream}, val, TrainRun(0, device)).fit()
        key = "cached_features" if cached else "frozen_backbone"
        out[f"linear_probe_{key}_s_per_epoch"] = round(fit.timing[-1]["seconds"], 3)
        if cached:
            out["linear_probe_feature_cache_s"] = round(cache_seconds, 3)
    out["linear_probe_speedup_per_epoch"] = round(
        out["linear_probe_frozen_backbone_s_per_epoch"] / max(1e-9, out["linear_probe_cached_features_s_per_epoch"]), 1
    )
    return out


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({len(os.sched_getaffinity(0))} cores)"


def throughput_markdown(r: dict[str, Any]) -> str:
    lines = [
        f"device {r['device']}, torch {r['torch']}, {r['date']}: {r['model']} at {r['image_size']} px, batch "
        f"{r['batch_size']}, {r['precision']}{', channels-last' if r['channels_last'] else ''}"
        f"{', compiled' if r['compile'] else ''}, augment {r['augment']}",
        "",
        f"| images/s, median of {len(r['trainer_img_s_runs'])} alternating runs | median | runs |",
        "|---|---|---|",
        f"| Trainer (shards on disk, prefetch, augmentation) | {r['trainer_img_s']:,.1f} | "
        f"{_runs(r['trainer_img_s_runs'])} |",
        f"| bare step (tensors on the device) | {r['bare_step_img_s']:,.1f} | {_runs(r['bare_step_img_s_runs'])} |",
        f"| ratio | {r['ratio']:.3f} | |",
    ]
    if r.get("gpu_memory_peak_gb"):
        lines.append(f"| GPU memory peak (GB) | {r['gpu_memory_peak_gb']} |")
    if "linear_probe_speedup_per_epoch" in r:
        frozen, cached = r["linear_probe_frozen_backbone_s_per_epoch"], r["linear_probe_cached_features_s_per_epoch"]
        lines += [
            "",
            f"linear probe, seconds per epoch: frozen backbone every step {frozen}, cached features {cached} "
            f"(x{r['linear_probe_speedup_per_epoch']}; caching once took {r['linear_probe_feature_cache_s']} s)",
        ]
    return "\n".join(lines) + "\n"


def _runs(values: list[float]) -> str:
    return " / ".join(f"{v:,.0f}" for v in values)


# ------------------------------------------------------------------------------------------------ data
def _jpeg(args: tuple[Path, int, int, int]) -> None:
    path, size, cls, seed = args
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(6):  # a few shapes: compresses like a photo more than noise does
        box = sorted(rng.integers(0, size, 2)), sorted(rng.integers(0, size, 2))
        draw.ellipse((box[0][0], box[1][0], box[0][1], box[1][1]), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw.text((size // 3, size // 3), str(cls), fill=(255, 255, 255))
    img.save(path, quality=90)


def make_image_folder(root: Path, images: int, size: int, classes: int = 10, workers: int = 0) -> Path:
    """``images`` JPEGs of ``size`` px in ``classes`` class folders (generated in a process pool)."""
    from transferops.data.shards import workers_for

    jobs = []
    for i in range(images):
        cls = i % classes
        folder = root / f"class{cls}"
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((folder / f"{i:07d}.jpg", size, cls, i))
    with multiprocessing.get_context("fork").Pool(workers_for(workers)) as pool:
        for _ in pool.imap_unordered(_jpeg, jobs, chunksize=256):
            pass
    return root


def _measured(fn, *args) -> dict[str, Any]:
    """Run ``fn(*args)`` in this (fresh) process; return its result with wall time and peak memory figures:
    the process's peak resident size, the peaks of its anonymous and file-backed parts (sampled every 50 ms:
    the file-backed part is mapped files, chiefly the shared libraries), and its decode workers' peak."""
    peaks = {"RssAnon": 0, "RssFile": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            for key, kib in _status(tuple(peaks)).items():
                peaks[key] = max(peaks[key], kib)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    try:
        out = fn(*args)
    finally:
        seconds = time.perf_counter() - t0
        done.set()
        sampler.join()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
    return {
        "result": out,
        "seconds": seconds,
        "peak_rss_gib": _own_peak_rss_gib(),
        "peak_anon_gib": peaks["RssAnon"] / 2**20,
        "peak_file_gib": peaks["RssFile"] / 2**20,
        "worker_peak_rss_gib": kids,
    }


def _status(keys: tuple[str, ...]) -> dict[str, int]:
    """Fields of /proc/self/status in KiB (empty where there is no /proc)."""
    try:
        with open("/proc/self/status") as status:
            return {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in status) if k in keys}
    except OSError:
        return {}


def _own_peak_rss_gib() -> float:
    """This process's own peak resident size.

    ``getrusage(RUSAGE_SELF).ru_maxrss`` cannot say it for a spawned process: Linux carries the high-water mark
    of the image before ``exec`` into it, so a child spawned from a large parent reports the parent's peak
    (measured: a child of a 1.5 GiB parent reported 1.48 GiB; its VmHWM was 0.015 GiB). ``VmHWM`` in
    /proc/self/status is the peak of this process's own address space; ``ru_maxrss`` is the fallback elsewhere.
    """
    hwm = _status(("VmHWM",)).get("VmHWM")
    return hwm / 2**20 if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _ingest(params: str) -> dict:
    from transferops.config import load_config
    from transferops.stages import ingest

    return ingest.run(load_config(params)).metrics


def _epoch(params: str) -> dict:
    from transferops.config import load_config
    from transferops.stages import pretrain

    result = pretrain.run(load_config(params))
    run = json.loads((Path(load_config(params).base.artifacts_dir) / "pretrain" / "run.json").read_text())
    return {**result.metrics, "throughput_img_s": run["epochs"][-1]["throughput_img_s"]}


def _loader(params: str, steps: int) -> float:
    """Images/s of the data path alone: gather from the shards, prefetch, augment, no model."""
    from transferops.config import load_config
    from transferops.data.augment import train_transform
    from transferops.data.batches import BatchStream, Prefetcher, to_float
    from transferops.data.shards import load_split
    from transferops.paths import Paths

    cfg = load_config(params)
    split = load_split(Paths.from_config(cfg).source_data, "labeled")
    stream = BatchStream(split, cfg.pretrain.batch_size, 0)
    steps = min(steps, stream.steps_per_pass)
    t0 = time.perf_counter()
    with Prefetcher(lambda s: {"x": stream.batch(s)}, 0, steps, depth=2, pin=False) as p:
        for s in range(steps):
            x, _ = p.get(s)["x"]
            train_transform(to_float(x), cfg.pretrain.augment, 0, s)
    return steps * stream.batch_size / (time.perf_counter() - t0)


def data(
    images: int = 40_000,
    size: int = 160,
    folder: Path | None = None,
    workers: int = 0,
    width: int = 8,
    epoch_steps: int = 0,
    keep: Path | None = None,
) -> dict[str, Any]:
    """Generate (or read) an ImageFolder, ingest it, train one epoch; each step in its own process."""
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="transferops-data-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "cpus": len(os.sched_getaffinity(0))}
    if folder is None:
        t0 = time.perf_counter()
        folder = make_image_folder(work / "images", images, size, workers=workers)
        report["generate_seconds"] = round(time.perf_counter() - t0, 1)
    files = sum(1 for p in Path(folder).rglob("*") if p.is_file())
    report.update({"folder": str(folder), "images": files, "image_size": size})
    params = _bench_params(work, folder, workers, width, epoch_steps)
    ctx = multiprocessing.get_context("spawn")  # a fresh process per phase: its own peak memory
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        ing = pool.submit(_measured, _ingest, str(params)).result()
    report["ingest_img_s"] = round(files / ing["seconds"], 1)
    report["ingest_seconds"] = round(ing["seconds"], 1)
    report["ingest_peak_rss_gib"] = round(ing["peak_rss_gib"], 3)
    report["ingest_worker_peak_rss_gib"] = round(ing["worker_peak_rss_gib"], 3)
    shards = work / "artifacts" / "ingest" / "source"
    report["decoded_gib"] = round(sum(p.stat().st_size for p in shards.glob("*.images.npy")) / 2**30, 2)
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        report["loader_img_s"] = round(pool.submit(_loader, str(params), 200).result(), 1)
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        ep = pool.submit(_measured, _epoch, str(params)).result()
    report["epoch_seconds"] = round(ep["seconds"], 1)
    report["epoch_steps"] = ep["result"]["steps"]
    report["epoch_train_img_s"] = round(ep["result"]["throughput_img_s"], 1)
    report["epoch_peak_rss_gib"] = round(ep["peak_rss_gib"], 3)
    report["epoch_peak_anon_gib"] = round(ep["peak_anon_gib"], 3)
    report["epoch_peak_file_gib"] = round(ep["peak_file_gib"], 3)
    return report


def _bench_params(work: Path, folder: Path, workers: int, width: int, epoch_steps: int) -> Path:
    import yaml

    from transferops.config import Config

    data = Config().to_dict()
    data["base"].update(artifacts_dir=str(work / "artifacts"), deterministic=False)
    data["ingest"].update(workers=workers, image_size="auto", channels="auto")
    data["ingest"]["source"] = {
        "kind": "image_folder",
        "path": str(folder),
        "split": {"test_fraction": 0.0, "val_per_class": 0},
    }
    data["ingest"]["target"] = {
        "kind": "sklearn_digits",
        "split": {"test_fraction": 0.3, "val_per_class": 5, "labels_per_class": 1},
    }
    data["model"].update(width=width)
    data["pretrain"].update(epochs=1, steps_per_epoch=epoch_steps, select_best=False, augment="affine")
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def data_markdown(r: dict[str, Any]) -> str:
    head = (
        f"{r['images']:,} JPEGs at {r['image_size']} px ({r['decoded_gib']} GiB decoded), {r['cpus']} CPUs, {r['date']}"
    )
    rss = f"{r['ingest_peak_rss_gib']} / {r['ingest_worker_peak_rss_gib']} GiB"
    epoch = f"{r['epoch_train_img_s']:,.1f} img/s ({r['epoch_seconds']} s)"
    rows = [
        ("ingest", f"{r['ingest_img_s']:,.0f} img/s ({r['ingest_seconds']} s)"),
        ("ingest peak RSS (main process / largest decode worker)", rss),
        ("loader alone (gather + prefetch + augment)", f"{r['loader_img_s']:,.0f} img/s"),
        (f"one training epoch ({r['epoch_steps']} steps)", epoch),
        (
            "training peak RSS (peaks of its anonymous / file-backed parts)",
            f"{r['epoch_peak_rss_gib']} GiB ({r['epoch_peak_anon_gib']} / {r['epoch_peak_file_gib']} GiB)",
        ),
    ]
    return "\n".join([head, "", "| | figure |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)]) + "\n"


__all__ = ["ThroughputSpec", "data", "data_markdown", "make_image_folder", "throughput", "throughput_markdown"]
