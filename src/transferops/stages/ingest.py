"""Stage 1, ingest: read the source and target datasets, validate them, split them, and write shards.

Outputs (``artifacts/ingest``): ``source/`` and ``target/`` dataset directories (shards + ``manifest.json``),
``validation.json`` (counts per class and split, duplicates, cross-split leakage) and ``result.json``.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import asdict
from typing import Any

import numpy as np

from transferops.config import Config, DatasetConfig
from transferops.data.readers import RawDataset, read_dataset
from transferops.data.shards import SPLITS, stratified_split, write_dataset
from transferops.errors import DataError
from transferops.lineage import lineage
from transferops.paths import Paths
from transferops.stages.common import StageResult, save_resolved_config, staged_output, start_stage, write_json
from transferops.tracking import NullTracker

log = logging.getLogger(__name__)

DOMAINS = ("source", "target")


def _remap_classes(ds: RawDataset, class_map: dict[str, str], reference: list[str] | None) -> RawDataset:
    """Apply ``class_map`` to names; when the names then equal the reference set, use the reference order."""
    names = [class_map.get(c, c) for c in ds.classes]
    if len(set(names)) != len(names):
        raise DataError(f"ingest.class_map maps two target classes onto one name: {names}")
    if reference is not None and set(names) == set(reference) and names != reference:
        order = np.array([reference.index(n) for n in names])
        return RawDataset(ds.images, order[ds.labels], list(reference), ds.origins)
    return RawDataset(ds.images, ds.labels, names, ds.origins)


def validate(
    ds: RawDataset, splits: dict[str, np.ndarray], domain: str, spec: DatasetConfig, cfg: Config
) -> dict[str, Any]:
    """Schema and quality checks; raises :class:`DataError` on what cannot be trained on."""
    where = f"ingest.{domain} ({spec.kind}{': ' + spec.path if spec.path else ''})"
    if len(ds.classes) < 2:
        raise DataError(f"{where}: found {len(ds.classes)} class {ds.classes}; expected at least 2 classes")
    counts = np.bincount(ds.labels, minlength=len(ds.classes))
    small = [c for c, n in zip(ds.classes, counts, strict=True) if n < cfg.ingest.min_per_class]
    if small:
        raise DataError(
            f"{where}: classes {small} have fewer than ingest.min_per_class={cfg.ingest.min_per_class} images"
        )
    hashes = [hashlib.sha1(img.tobytes()).hexdigest() for img in ds.images]
    split_of = {int(i): s for s, idx in splits.items() for i in idx}
    seen: dict[str, set[str]] = {}
    for i, h in enumerate(hashes):
        seen.setdefault(h, set()).add(split_of.get(i, "unused"))
    dup_counts = Counter(hashes)
    duplicates = sum(n - 1 for n in dup_counts.values() if n > 1)
    leaked = sum(1 for i, h in enumerate(hashes) if split_of.get(i) == "test" and len(seen[h] - {"test"}) > 0)
    report = {
        "num_images": int(len(ds.labels)),
        "classes": ds.classes,
        "image_shape": list(ds.images.shape[1:]),
        "per_class": {c: int(n) for c, n in zip(ds.classes, counts, strict=True)},
        "split_counts": {s: int(len(splits[s])) for s in SPLITS},
        "duplicate_images": int(duplicates),
        "test_images_also_in_training_splits": int(leaked),
    }
    if leaked:
        msg = f"{where}: {leaked} test images also appear (identical bytes) in labeled/unlabeled/val splits"
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
    manifests, reports = {}, {}
    with tracker.stage_run("ingest", cfg), staged_output(paths.stage("ingest")) as out:
        reference = None
        for offset, domain in enumerate(DOMAINS):
            spec: DatasetConfig = getattr(ing, domain)
            ds = read_dataset(spec, ing.image_size, ing.channels, cfg.base.seed + 1000 * offset)
            ds = _remap_classes(ds, ing.class_map if domain == "target" else {}, reference)
            splits = stratified_split(ds.labels, len(ds.classes), spec.split, cfg.base.seed + offset)
            reports[domain] = validate(ds, splits, domain, spec, cfg)
            manifests[domain] = write_dataset(
                out / domain,
                ds.images,
                ds.labels,
                ds.classes,
                splits,
                ing.shard_size,
                extra={"domain": domain, "spec": asdict(spec)},
            )
            reference = ds.classes
            log.info(
                "ingest %s: %d images, %d classes, version %s, splits %s",
                domain,
                reports[domain]["num_images"],
                len(ds.classes),
                manifests[domain]["version"],
                reports[domain]["split_counts"],
            )
        same = manifests["source"]["classes"] == manifests["target"]["classes"]
        if not same:
            log.warning(
                "source and target classes differ: finetune will train a new head; source-only baseline skipped"
            )
        report = {"domains": reports, "same_classes": same}
        write_json(out / "validation.json", report)
        save_resolved_config(cfg, out)
        lin = lineage(cfg, source_version=manifests["source"]["version"], target_version=manifests["target"]["version"])
        metrics = {f"{d}_{s}_count": reports[d]["split_counts"][s] for d in DOMAINS for s in SPLITS}
        result = StageResult(
            "ingest", {"source": str(paths.source_data), "target": str(paths.target_data)}, metrics, tracker.run_id, lin
        )
        write_json(out / "result.json", result.to_dict())
        tracker.log_metrics(metrics)
        tracker.set_tags(
            {"transferops.source_version": lin["source_version"], "transferops.target_version": lin["target_version"]}
        )
        for domain in DOMAINS:
            tracker.log_artifact(out / domain / "manifest.json", f"datasets/{domain}")
        tracker.log_artifact(out / "validation.json", "datasets")
    return result
