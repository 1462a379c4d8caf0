"""Stage 1, ingest: read the source and target datasets, validate them, split them, and write shards.

Checks run cheapest first, so a bad input fails in seconds with the file or key named, before anything
heavy: every configured path, then each dataset's listing (class folders, file types, empty files), then its
class structure (at least two classes, ``min_per_class``), then the splits. Only then are images decoded, in
a process pool (``ingest.workers``), streamed into shards: memory stays bounded whatever the dataset size.

Outputs (``artifacts/ingest``): ``source/`` and ``target/`` dataset directories (shards + ``manifest.json``),
``validation.json`` (counts per class and split, duplicates, cross-split leakage) and ``result.json``.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from transferops.config import Config, DatasetConfig
from transferops.data.shards import SPLITS, stratified_split, write_dataset
from transferops.data.sources import Source, apply_class_map, check_path, open_source
from transferops.errors import DataError
from transferops.lineage import lineage
from transferops.paths import Paths
from transferops.stages.common import StageResult, save_resolved_config, staged_output, start_stage, write_json
from transferops.tracking import NullTracker

log = logging.getLogger(__name__)

DOMAINS = ("source", "target")
AUTO_SIZE_RANGE = (28, 256)


def where(domain: str, spec: DatasetConfig) -> str:
    """How errors name a dataset: its params key, kind and path."""
    return f"ingest.{domain} ({spec.kind}{': ' + spec.path if spec.path else ''})"


def check_classes(source: Source, cfg: Config) -> None:
    """At least two classes, each with ``ingest.min_per_class`` images (from the listing: nothing decoded)."""
    if len(source.classes) < 2:
        raise DataError(
            f"{source.where}: found {len(source.classes)} class {source.classes}; expected at least 2 classes"
        )
    counts = np.bincount(source.labels, minlength=len(source.classes))
    small = [c for c, n in zip(source.classes, counts, strict=True) if n < cfg.ingest.min_per_class]
    if small:
        raise DataError(
            f"{source.where}: classes {small} have fewer than ingest.min_per_class={cfg.ingest.min_per_class} images"
        )


def resolve_geometry(cfg: Config, sources: dict[str, Source]) -> tuple[int, int]:
    """``ingest.image_size`` and ``ingest.channels``, with ``auto`` read from the data.

    Size: the larger of the datasets' median stored sizes (clipped to 28..256); 28 when none has one
    (rendered digits) or when they are smaller (the 8 px sklearn digits are upscaled, as before). Channels: 3
    when either dataset has colour images. One geometry for both domains: one network reads both.
    """
    ing = cfg.ingest
    size = ing.image_size
    if size == "auto":
        native = [s.native_size for s in sources.values() if s.native_size]
        size = int(np.clip(max(native) if native else AUTO_SIZE_RANGE[0], *AUTO_SIZE_RANGE))
    channels = ing.channels
    if channels == "auto":
        channels = 3 if any(s.colour for s in sources.values()) else 1
    if "auto" in (ing.image_size, ing.channels):
        log.info("ingest: images stored as %d channel(s) at %dx%d px (auto, from the data)", channels, size, size)
    return int(size), int(channels)


def quality_report(source: Source, splits: dict[str, np.ndarray], hashes: np.ndarray, cfg: Config) -> dict[str, Any]:
    """Counts, duplicates and test images also present (identical bytes) in a training split."""
    split_of = {int(i): s for s, idx in splits.items() for i in idx}
    seen: dict[str, set[str]] = {}
    for i, h in enumerate(hashes):
        if h is not None:
            seen.setdefault(h, set()).add(split_of.get(i, "unused"))
    dup_counts = Counter(h for h in hashes if h is not None)
    duplicates = sum(n - 1 for n in dup_counts.values() if n > 1)
    leaked = sum(1 for i, h in enumerate(hashes) if split_of.get(i) == "test" and len(seen[h] - {"test"}) > 0)
    counts = np.bincount(source.labels, minlength=len(source.classes))
    report = {
        "num_images": int(len(source)),
        "classes": source.classes,
        "per_class": {c: int(n) for c, n in zip(source.classes, counts, strict=True)},
        "split_counts": {s: int(len(splits[s])) for s in SPLITS},
        "duplicate_images": int(duplicates),
        "test_images_also_in_training_splits": int(leaked),
    }
    if leaked:
        msg = f"{source.where}: {leaked} test images also appear (identical bytes) in labeled/unlabeled/val splits"
        if cfg.ingest.on_leakage == "fail":
            raise DataError(msg + " (ingest.on_leakage: fail)")
        log.warning("%s", msg)
    return report


def run(cfg: Config, tracker: NullTracker | None = None) -> StageResult:
    """Read, validate, split and shard both domains into ``artifacts/ingest``."""
    tracker = tracker or NullTracker()
    start_stage(cfg)
    paths = Paths.from_config(cfg)
    ing = cfg.ingest
    specs: dict[str, DatasetConfig] = {d: getattr(ing, d) for d in DOMAINS}
    for domain, spec in specs.items():  # 1. every path, before anything is read
        check_path(spec, f"ingest.{domain}")
    with (
        tracker.stage_run("ingest", cfg),
        staged_output(paths.stage("ingest")) as out,
        tempfile.TemporaryDirectory(prefix="transferops-ingest-") as work,
    ):
        sources: dict[str, Source] = {}
        for offset, (domain, spec) in enumerate(specs.items()):  # 2. listings and class structure
            source = open_source(spec, ing, cfg.base.seed + 1000 * offset, Path(work) / domain, where(domain, spec))
            if domain == "target":
                source = apply_class_map(source, ing.class_map, sources["source"].classes)
            check_classes(source, cfg)
            sources[domain] = source
        splits = {  # 3. splits, whose errors name the dataset and the class
            d: stratified_split(s.labels, s.classes, specs[d].split, cfg.base.seed + i, s.where)
            for i, (d, s) in enumerate(sources.items())
        }
        size, channels = resolve_geometry(cfg, sources)
        manifests, reports = {}, {}
        for domain, source in sources.items():  # 4. decode into shards
            manifests[domain], hashes = write_dataset(
                out / domain,
                source,
                splits[domain],
                ing.shard_size,
                size,
                channels,
                ing.workers,
                extra={"domain": domain, "spec": asdict(specs[domain])},
            )
            reports[domain] = quality_report(source, splits[domain], hashes, cfg)
            reports[domain]["image_shape"] = manifests[domain]["image_shape"]
            log.info(
                "ingest %s: %d images, %d classes, version %s, splits %s",
                domain,
                reports[domain]["num_images"],
                len(source.classes),
                manifests[domain]["version"],
                reports[domain]["split_counts"],
            )
        same = manifests["source"]["classes"] == manifests["target"]["classes"]
        if not same:
            log.warning(
                "source and target classes differ: finetune will train a new head; source-only baseline skipped"
            )
        write_json(out / "validation.json", {"domains": reports, "same_classes": same})
        save_resolved_config(cfg, out)
        lin = lineage(cfg, source_version=manifests["source"]["version"], target_version=manifests["target"]["version"])
        metrics = {f"{d}_{s}_count": reports[d]["split_counts"][s] for d in DOMAINS for s in SPLITS}
        result = StageResult(
            "ingest", {"source": str(paths.source_data), "target": str(paths.target_data)}, metrics, tracker.run_id, lin
        )
        write_json(out / "result.json", result.to_file())
        tracker.set_tags(
            {
                "transferops.source_version": lin["source_version"],
                "transferops.target_version": lin["target_version"],
                **{f"transferops.{k}": str(v) for k, v in metrics.items()},  # counts: tags, not charts
            }
        )
        tracker.log_datasets(manifests)
        for domain in DOMAINS:
            tracker.log_artifact(out / domain / "manifest.json", f"datasets/{domain}")
        tracker.log_artifact(out / "validation.json", "datasets")
    return result
