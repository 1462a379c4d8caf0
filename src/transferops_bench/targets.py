"""Targets nobody tuned on: image folders of the kind a new user brings, generated from pinned packages.

Each is written as ``<root>/<class>/<n>.png`` (RGB), read by the pipeline as ``kind: image_folder`` through
params alone, with ``ingest.image_size`` and ``ingest.channels`` left at ``auto``:

- ``digits_inverted_colour``: scikit-learn's handwritten digits as dark ink on light paper, random ink and
  paper colours per image, RGB, 32 px: the polarity and colour the embedded source never shows.
- ``digits_oldstyle_colour``: printed digits in a face the source never renders (matplotlib's ``cmmi10``, old-
  style figures with descenders), dark coloured ink on light coloured paper with noise, RGB, 32 px.
- ``new_classes_digits_0to4_5to9``: a **new class set** (the user's case): the source is printed digits 0-4 only
  (an image folder rendered like the embedded source), the target scikit-learn's handwritten 5-9, grey 28 px.
- ``new_classes_letters_colour``: a new class set on the configured source: printed letters A-J (the bundled
  faces, random geometry), dark coloured ink on light paper, RGB 32 px.
- ``digits_imbalanced_10to1``: scikit-learn's handwritten digits with a long tail, 170 images of class 0 down
  to 17 of class 9 (10:1), every training image labelled (``labels_per_class: null``): the imbalanced case
  ``finetune.class_balance`` is for; scored on accuracy and balanced accuracy.

``transferops benchmark targets`` runs the configured pipeline on each (:func:`targets`).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from transferops.config import Config, DatasetConfig, SplitConfig

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


GREY = 28
"""Side of the grey targets and sources: the embedded default's stored size."""


def _handwritten(root: Path, keep: Callable[[int, int], bool]) -> Path:
    """scikit-learn's handwritten digits (light ink on dark, like the embedded target), grey 28 px, keeping
    image ``n`` of class ``label`` when ``keep(label, n)``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    counts: dict[int, int] = {}
    for img, label in zip(bunch.images, bunch.target, strict=True):
        n = counts.get(int(label), 0)
        if not keep(int(label), n):
            continue
        counts[int(label)] = n + 1
        lum = Image.fromarray((img / 16 * 255).astype(np.uint8)).resize((GREY, GREY), Image.BICUBIC)
        _save(root, str(label), n, np.asarray(lum))
    return root


def handwritten_5to9(root: Path, seed: int = 0) -> Path:
    """The handwritten digits 5-9 only (about 900 images): classes a 0-4 source has never seen."""
    return _handwritten(root, lambda label, _n: label >= 5)


def printed_0to4(root: Path, seed: int = 0, per_class: int = 300) -> Path:
    """Printed digits 0-4 rendered like the embedded source (:func:`transferops.data.synthetic.render_digit`),
    grey 28 px: a source that shares no class with a 5-9 target."""
    from transferops.data.synthetic import render_digit

    for label in range(5):
        for n in range(per_class):
            _save(root, str(label), n, render_digit(label * per_class + n, label, GREY, seed))
    return root


LETTERS = "ABCDEFGHIJ"


def letters_colour(root: Path, seed: int = 0, per_class: int = 150) -> Path:
    """Printed letters A-J from the bundled faces (random rotation, shear, stroke, blur), dark coloured ink on
    light coloured paper, RGB 32 px: ten classes a digit source has never seen."""
    from transferops.data.synthetic import load_fonts, render_one

    fonts = load_fonts()
    rng = np.random.default_rng(seed)
    for letter in LETTERS:
        for n in range(per_class):
            lum = render_one(letter, fonts[int(rng.integers(0, len(fonts)))], rng, SIZE) / 255.0
            _save(root, letter, n, _colourise(lum, rng))
    return root


IMBALANCE = 10.0
"""Largest over smallest class of the imbalanced target."""


def digits_imbalanced(root: Path, seed: int = 0, largest: int = 170) -> Path:
    """The handwritten digits with an exponential long tail: class c keeps ``largest * IMBALANCE^(-c/9)``
    images (170 of class 0 down to 17 of class 9)."""
    keep = {c: round(largest * IMBALANCE ** (-c / 9)) for c in range(10)}
    return _handwritten(root, lambda label, n: n < keep[label])


def _save(root: Path, label: str, n: int, pixels: np.ndarray) -> None:
    folder = Path(root) / label
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB" if pixels.ndim == 3 else "L").save(folder / f"{n:04d}.png")


@dataclass(frozen=True)
class Task:
    """A benchmark task: the target folder it writes, optionally its own source folder and target split, and
    variants (``method@class_balance``) that only mean something on it."""

    target: Callable[..., Path]
    source: Callable[..., Path] | None = None
    """None: the configured source (``ingest.source``)."""
    split: SplitConfig | None = None
    """None: the configured target split (``ingest.target.split``)."""
    variants: tuple[str, ...] = field(default_factory=tuple)


TARGETS: dict[str, Task] = {
    "digits_inverted_colour": Task(digits_inverted_colour),
    "digits_oldstyle_colour": Task(digits_oldstyle_colour),
    "new_classes_digits_0to4_5to9": Task(handwritten_5to9, source=printed_0to4),
    "new_classes_letters_colour": Task(letters_colour),
    "digits_imbalanced_10to1": Task(
        digits_imbalanced,
        split=SplitConfig(test_fraction=0.3, val_per_class=2, labels_per_class=None),
        variants=("full_finetune@weighted", "full_finetune@sampler"),
    ),
}


def target_config(
    cfg: Config,
    path: Path,
    artifacts: str,
    seed: int,
    method: str | None = None,
    source: Path | None = None,
    split: SplitConfig | None = None,
) -> Config:
    """``cfg`` with the target replaced by the image folder at ``path`` (its split settings kept unless
    ``split``), and the source by the folder at ``source`` when given."""
    target = DatasetConfig(kind="image_folder", path=str(path), split=split or cfg.ingest.target.split)
    src = cfg.ingest.source
    if source is not None:
        src = DatasetConfig(kind="image_folder", path=str(source), split=cfg.ingest.source.split)
    out = replace(
        cfg,
        base=replace(cfg.base, seed=seed, artifacts_dir=artifacts),
        ingest=replace(cfg.ingest, target=target, source=src),
    )
    return replace(out, finetune=replace(cfg.finetune, method=method)) if method else out


def variant_config(cfg: Config, variant: str) -> Config:
    """``method`` or ``method@class_balance`` (e.g. ``full_finetune@weighted``) applied to ``cfg``."""
    method, _, balance = variant.partition("@")
    return replace(cfg, finetune=replace(cfg.finetune, method=method, class_balance=balance or "none"))


def _scores(model_path: Path, test) -> tuple[float, float]:
    """Accuracy and balanced accuracy of the checkpoint at ``model_path`` on ``test``."""
    from transferops.evaluation.metrics import balanced_accuracy
    from transferops.models.inference import predict_proba
    from transferops.models.io import load_model

    model, _ = load_model(model_path)
    preds = predict_proba(model, test).argmax(1)
    return float((preds == test.labels).mean()), balanced_accuracy(test.labels, preds)


def run_target(
    cfg: Config, path: Path, root: Path, seed: int, methods: list[str], task: Task | None = None
) -> dict[str, Any]:
    """The pipeline up to evaluate on one generated target for one seed: the configured method with its
    evaluate metrics, then every other variant (``methods`` and the task's own) on the same source model.
    Each variant's accuracy, balanced accuracy (``balanced``), the method it trained (``trained``: what
    ``recipe``/``auto`` chose) and finetune's seconds and images per second are recorded."""
    from transferops.data.shards import load_split, read_manifest
    from transferops.paths import Paths
    from transferops.stages import finetune, graph, run_pipeline
    from transferops.stages.common import read_json
    from transferops.tracking import NullTracker

    task = task or Task(lambda root, seed=0: root)
    source = root.parent / "data" / f"{root.name}-source" if task.source is not None else None
    run_cfg = target_config(cfg, path, str(root / f"seed{seed}"), seed, source=source, split=task.split)
    paths = Paths.from_config(run_cfg)
    run_pipeline(run_cfg, lambda _: NullTracker(), graph.upstream("evaluate"))
    m = read_json(paths.stage("evaluate") / "metrics.json")
    manifest = read_manifest(paths.target_data)
    test = load_split(paths.target_data, "test")
    default = (
        cfg.finetune.method
        if cfg.finetune.class_balance == "none"
        else f"{cfg.finetune.method}@{cfg.finetune.class_balance}"
    )
    row: dict[str, Any] = {
        "seed": seed,
        "image_shape": manifest["image_shape"],
        "chance": 1 / len(manifest["classes"]),
        "n_test": len(test),
        "source_only": m["source_only_accuracy"],
        "from_scratch": m["from_scratch_accuracy"],
        "negative_transfer": m["negative_transfer"],
        "balanced": {
            "from_scratch": _scores(paths.baseline_model, test)[1] if paths.baseline_model.is_file() else None
        },
        "trained": {},
        "seconds": {},
        "images_per_second": {},
    }

    def record(variant: str) -> None:
        run = read_json(paths.stage("finetune") / "run.json")
        row[variant], row["balanced"][variant] = _scores(paths.target_model, test)
        row["trained"][variant] = read_json(paths.stage("finetune") / "metrics.json").get("method")
        row["seconds"][variant] = run["seconds"]
        ips = [e.get("throughput_img_s") for e in run.get("epochs", []) if e.get("throughput_img_s")]
        row["images_per_second"][variant] = float(np.mean(ips)) if ips else None

    record(default)
    for variant in dict.fromkeys([*methods, *task.variants]):
        if variant == default:
            continue
        finetune.run(variant_config(run_cfg, variant))
        record(variant)
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
            task = TARGETS[name]
            path = task.target(Path(tmp) / "data" / name)
            if task.source is not None:
                task.source(Path(tmp) / "data" / f"{name}-source")
            rows = [run_target(cfg, path, Path(tmp) / name, cfg.base.seed + i, methods, task) for i in range(n_seeds)]
            variants = [v for v in rows[0]["trained"]]
            report["targets"][name] = {
                "image_shape": rows[0]["image_shape"],
                "chance": rows[0]["chance"],
                "n_test": rows[0]["n_test"],
                "summary": {k: stats([r[k] for r in rows]) for k in ["source_only", "from_scratch", *variants]},
                "balanced": {k: stats([r["balanced"][k] for r in rows]) for k in ["from_scratch", *variants]},
                "trained": {v: [r["trained"][v] for r in rows] for v in variants},
                "images_per_second": {v: stats([r["images_per_second"][v] for r in rows]) for v in variants},
                "runs": rows,
            }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "targets.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "targets.md").write_text(targets_markdown(report))
    return report


def targets_markdown(report: dict[str, Any]) -> str:
    def pct(s: dict[str, Any]) -> str:
        return "n/a" if s["mean"] is None else f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}"

    keys = list(dict.fromkeys(k for t in report["targets"].values() for k in t["summary"]))
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
        vals = " | ".join(pct(t["summary"][k]) if k in t["summary"] else "" for k in keys)
        rows.append(f"| {name} | {c}x{h}x{w} | {100 * t['chance']:.0f} | {vals} | {flagged} of {len(t['runs'])} |")
    for name, t in report["targets"].items():
        if "balanced" not in t:
            continue
        bal = " | ".join(f"{k} {pct(s)}" for k, s in t["balanced"].items())
        chose = "; ".join(
            f"{v}: {', '.join(str(m) for m in ms)}"
            for v, ms in t["trained"].items()
            if v.split("@")[0] in ("recipe", "auto")
        )
        speed = " | ".join(f"{v} {s['mean']:.0f}" for v, s in t["images_per_second"].items() if s["mean"] is not None)
        rows += ["", f"**{name}**: balanced accuracy (%): {bal}."]
        if chose:
            rows.append(f"Methods chosen per seed: {chose}.")
        if speed:
            rows.append(f"finetune images/s: {speed}.")
    return "\n".join(rows) + "\n"
