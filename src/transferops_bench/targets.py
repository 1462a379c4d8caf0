"""Targets nobody tuned on: image folders of the kind a new user brings, generated from pinned packages.

Each is written as ``<root>/<class>/<n>.png`` (RGB), read by the pipeline as ``kind: image_folder`` through
params alone, with ``ingest.image_size`` and ``ingest.channels`` left at ``auto``:

- ``digits_inverted_colour``: scikit-learn's handwritten digits as dark ink on light paper, random ink and
  paper colours per image, RGB, 32 px: the polarity and colour the embedded source never shows.
- ``digits_oldstyle_colour``: printed digits in a face the source never renders (matplotlib's ``cmmi10``, old-
  style figures with descenders), dark coloured ink on light coloured paper with noise, RGB, 32 px.

``transferops benchmark targets`` runs the configured pipeline on each (:func:`targets`).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from transferops.config import Config, DatasetConfig

log = logging.getLogger(__name__)

SIZE = 32


def _colourise(lum: np.ndarray, rng: np.random.Generator, noise: float = 0.03) -> np.ndarray:
    """Ink luminance (H, W) in [0, 1] (1 = ink) -> RGB uint8: dark ink on light paper, random colours."""
    paper = rng.uniform(0.65, 1.0, 3)
    ink = rng.uniform(0.0, 0.35, 3)
    rgb = paper + (ink - paper) * lum[..., None]
    rgb = rgb + rng.normal(0, noise, rgb.shape)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def digits_inverted_colour(root: Path, seed: int = 0, per_class: int | None = None) -> Path:
    """scikit-learn's 1,797 handwritten digits (8 px, light ink on dark) as dark ink on light paper, RGB 32 px."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    rng = np.random.default_rng(seed)
    counts: dict[int, int] = {}
    for img, label in zip(bunch.images, bunch.target, strict=True):
        n = counts.get(int(label), 0)
        if per_class is not None and n >= per_class:
            continue
        counts[int(label)] = n + 1
        lum = np.asarray(Image.fromarray((img / 16 * 255).astype(np.uint8)).resize((SIZE, SIZE), Image.BICUBIC))
        _save(root, str(label), n, _colourise(lum / 255.0, rng))
    return root


def digits_oldstyle_colour(root: Path, seed: int = 0, per_class: int | None = 150) -> Path:
    """Digits rendered from matplotlib's ``cmmi10`` (a face the source never uses: old-style figures), rotated
    and scaled at random, dark coloured ink on light coloured paper with noise, RGB 32 px."""
    import matplotlib

    font_path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "cmmi10.ttf"
    rng = np.random.default_rng(seed)
    n_per = per_class or 150
    for digit in range(10):
        for n in range(n_per):
            font = ImageFont.truetype(str(font_path), int(rng.integers(40, 64)))
            canvas = Image.new("L", (128, 128), 0)
            ImageDraw.Draw(canvas).text((32, 16), str(digit), fill=255, font=font)
            canvas = canvas.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR)
            box = canvas.getbbox() or (0, 0, 128, 128)
            glyph = canvas.crop(box)
            side = int(max(glyph.size) * rng.uniform(1.2, 1.5))
            square = Image.new("L", (side, side), 0)
            square.paste(glyph, ((side - glyph.size[0]) // 2, (side - glyph.size[1]) // 2))
            lum = np.asarray(square.resize((SIZE, SIZE), Image.BILINEAR)) / 255.0
            _save(root, str(digit), n, _colourise(lum, rng, noise=0.05))
    return root


def _save(root: Path, label: str, n: int, rgb: np.ndarray) -> None:
    folder = Path(root) / label
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb, "RGB").save(folder / f"{n:04d}.png")


TARGETS: dict[str, Callable[..., Path]] = {
    "digits_inverted_colour": digits_inverted_colour,
    "digits_oldstyle_colour": digits_oldstyle_colour,
}


def target_config(cfg: Config, path: Path, artifacts: str, seed: int, method: str | None = None) -> Config:
    """``cfg`` with the target replaced by the image folder at ``path`` (its split settings kept)."""
    target = DatasetConfig(kind="image_folder", path=str(path), split=cfg.ingest.target.split)
    out = replace(
        cfg,
        base=replace(cfg.base, seed=seed, artifacts_dir=artifacts),
        ingest=replace(cfg.ingest, target=target),
    )
    return replace(out, finetune=replace(cfg.finetune, method=method)) if method else out


def run_target(cfg: Config, path: Path, root: Path, seed: int, methods: list[str]) -> dict[str, Any]:
    """The pipeline up to evaluate on one generated target for one seed: the configured
    method with its evaluate metrics, then any other ``methods`` on the same source model."""
    from transferops.data.shards import load_split, read_manifest
    from transferops.models.inference import accuracy
    from transferops.models.io import load_model
    from transferops.paths import Paths
    from transferops.stages import finetune, graph, run_pipeline
    from transferops.stages.common import read_json
    from transferops.tracking import NullTracker

    run_cfg = target_config(cfg, path, str(root / f"seed{seed}"), seed)
    paths = Paths.from_config(run_cfg)
    run_pipeline(run_cfg, lambda _: NullTracker(), graph.upstream("evaluate"))
    seconds = read_json(paths.stage("finetune") / "run.json")["seconds"]
    m = read_json(paths.stage("evaluate") / "metrics.json")
    manifest = read_manifest(paths.target_data)
    row = {
        "seed": seed,
        "image_shape": manifest["image_shape"],
        "chance": 1 / len(manifest["classes"]),
        "source_only": m["source_only_accuracy"],
        "from_scratch": m["from_scratch_accuracy"],
        cfg.finetune.method: m["accuracy"],
        "negative_transfer": m["negative_transfer"],
        "seconds": seconds,
    }
    test = load_split(paths.target_data, "test")
    for method in methods:
        if method == cfg.finetune.method:
            continue
        finetune.run(replace(run_cfg, finetune=replace(run_cfg.finetune, method=method)))
        model, _ = load_model(paths.target_model)
        row[method] = accuracy(model, test)
    log.info("target %s seed %d: %s", path.name, seed, {k: v for k, v in row.items() if k != "negative_transfer"})
    return row


def targets(
    cfg: Config,
    n_seeds: int,
    names: list[str] | None = None,
    methods: list[str] | None = None,
    out_dir: Path = Path("reports"),
) -> dict[str, Any]:
    """The configured pipeline on every generated target (:data:`TARGETS`) for ``n_seeds`` seeds; writes
    reports/targets.json and reports/targets.md."""
    from transferops.errors import ConfigError
    from transferops_bench.seeds import stats

    names = names or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        raise ConfigError(f"--targets: unknown {unknown} (expected some of {', '.join(TARGETS)})")
    methods = list(dict.fromkeys([cfg.finetune.method, *(methods or [])]))
    report: dict[str, Any] = {"seeds": n_seeds, "method": cfg.finetune.method, "targets": {}}
    with tempfile.TemporaryDirectory(prefix="transferops-targets-") as tmp:
        for name in names:
            path = TARGETS[name](Path(tmp) / "data" / name)
            rows = [run_target(cfg, path, Path(tmp) / name, cfg.base.seed + i, methods) for i in range(n_seeds)]
            keys = ["source_only", "from_scratch", *methods]
            report["targets"][name] = {
                "image_shape": rows[0]["image_shape"],
                "chance": rows[0]["chance"],
                "summary": {k: stats([r[k] for r in rows]) for k in keys},
                "runs": rows,
            }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "targets.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "targets.md").write_text(targets_markdown(report))
    return report


def targets_markdown(report: dict[str, Any]) -> str:
    def pct(s: dict[str, Any]) -> str:
        return "n/a" if s["mean"] is None else f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}"

    first = next(iter(report["targets"].values()), None)
    keys = list(first["summary"]) if first else []
    rows = [
        f"Generated targets nobody tuned on, through params alone; target test accuracy (%), mean ± std over "
        f"{report['seeds']} seeds; the default pipeline is `{report['method']}`.",
        "",
        "| target | stored as | chance | " + " | ".join(keys) + " | negative transfer flagged |",
        "|---" * (len(keys) + 4) + "|",
    ]
    for name, t in report["targets"].items():
        c, h, w = t["image_shape"]
        flagged = sum(bool(r["negative_transfer"]) for r in t["runs"])
        vals = " | ".join(pct(t["summary"][k]) for k in keys)
        rows.append(f"| {name} | {c}x{h}x{w} | {100 * t['chance']:.0f} | {vals} | {flagged} of {len(t['runs'])} |")
    return "\n".join(rows) + "\n"
