"""A reviewer's evidence, written by the evaluate stage and logged to its MLflow run: what a person deciding
to ship looks at beside the accuracy.

- ``review/saliency_<class>.png``: per class, a few test images the model got right (its most confident)
  and wrong (its most confident mistakes), each with its Grad-CAM map for the predicted class
  (:mod:`~transferops.evaluation.saliency`);
- ``review/confused_pairs.png``: the most confused (true, predicted) class pairs, with example images;
- ``review/review.json``: the per-class table (test images, recall, precision, F1, most frequent mistake),
  the confused pairs and where the panels are logged; the register stage puts the table and the links in
  the model card (:func:`card_lines`).

The pure parts (:func:`per_class_table`, :func:`confused_pairs`, :func:`pick_examples`) take labels and
predictions only; :func:`write_review` adds the images, the maps and the logging.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferops.data.augment import eval_transform
from transferops.evaluation.saliency import grad_cam

ARTIFACT_DIR = "review"
"""Artifact folder of the panels in the evaluate run (and sub-folder of the stage's output)."""
REVIEW_FILE = "review.json"
TOP_PAIRS = 3
"""Confused class pairs shown."""
PAIR_EXAMPLES = 4
"""Example images per confused pair."""
CAM_BATCH = 64
"""Images per Grad-CAM pass."""
THUMB_PX = 96
"""Side of a thumbnail in the panels (small images are enlarged with nearest-neighbour: pixels stay visible)."""
CAPTION_PX = 11
HEAT_ALPHA = 0.6
"""Opacity of the saliency colours over the image where the map peaks (it fades with the map)."""


def per_class_table(labels: np.ndarray, preds: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    """One row per class: test images, recall (the class's accuracy), precision, F1, and the class its images
    are most often mistaken for (None when never) with how many."""
    k = len(classes)
    cm = np.bincount(labels * k + preds, minlength=k * k).reshape(k, k)
    rows = []
    for i, name in enumerate(classes):
        n, hit, said = int(cm[i].sum()), int(cm[i, i]), int(cm[:, i].sum())
        recall = hit / n if n else None
        precision = hit / said if said else None
        f1 = None if recall is None or precision is None else 2 * precision * recall / max(precision + recall, 1e-12)
        off = cm[i].copy()
        off[i] = 0
        worst = int(off.argmax())
        rows.append(
            {
                "class": name,
                "n": n,
                "recall": recall,
                "precision": precision,
                "f1": f1,
                "confused_with": classes[worst] if off[worst] else None,
                "confused_count": int(off[worst]),
            }
        )
    return rows


def confused_pairs(labels: np.ndarray, preds: np.ndarray, classes: list[str], top: int = TOP_PAIRS) -> list[dict]:
    """The ``top`` (true, predicted) pairs of distinct classes with the most test images, most first (ties:
    class order); pairs that never happen are left out."""
    k = len(classes)
    cm = np.bincount(labels * k + preds, minlength=k * k).reshape(k, k)
    np.fill_diagonal(cm, 0)
    order = np.argsort(-cm, axis=None, kind="stable")[:top]
    return [
        {
            "true": classes[t],
            "predicted": classes[p],
            "count": int(cm[t, p]),
            "true_index": int(t),
            "pred_index": int(p),
        }
        for t, p in (np.unravel_index(i, cm.shape) for i in order)
        if cm[t, p] > 0
    ]


def pick_examples(
    labels: np.ndarray, preds: np.ndarray, confidence: np.ndarray, klass: int, k: int
) -> tuple[list[int], list[int]]:
    """Indices of up to ``k`` right and ``k`` wrong test images of class ``klass``, each the most confident
    first (the model's surest successes and its surest mistakes: the informative ones)."""
    mine = np.flatnonzero(labels == klass)
    by_conf = mine[np.argsort(-confidence[mine], kind="stable")]
    right = [int(i) for i in by_conf if preds[i] == klass][:k]
    wrong = [int(i) for i in by_conf if preds[i] != klass][:k]
    return right, wrong


def _display(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, C) or (N, H, W) floats in [0, 1] as the network sees them (after the evaluation crop)."""
    x = eval_transform(torch.from_numpy(np.asarray(images)).float() / 255.0, size).numpy()
    x = np.transpose(x, (0, 2, 3, 1))
    return x[..., 0] if x.shape[-1] == 1 else x


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "class"


def _heat(cam: np.ndarray) -> np.ndarray:
    """A blue -> green -> red colour map of values in [0, 1], as (H, W, 3) floats."""
    return np.stack([np.clip(2 * cam - 0.5, 0, 1), 1 - np.abs(2 * cam - 1), np.clip(1.5 - 2 * cam, 0, 1)], -1)


def _thumbs(path: Path, rows: list[list[tuple[np.ndarray, np.ndarray | None, str, bool]]], title: str) -> None:
    """A grid of thumbnails, (image, saliency or None, caption, correct) per cell, as one small PNG.

    Drawn with Pillow, not matplotlib: a panel per class costs milliseconds rather than most of a second.
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=CAPTION_PX)
    cols = max(1, max(len(r) for r in rows))
    cell_h = THUMB_PX + CAPTION_PX + 4
    sheet = Image.new("RGB", (cols * (THUMB_PX + 4) + 4, len(rows) * cell_h + CAPTION_PX + 8), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 2), title, fill="black", font=font)
    for r, cells in enumerate(rows):
        for c, (img, cam, caption, correct) in enumerate(cells):
            rgb = np.repeat(img[..., None], 3, -1) if img.ndim == 2 else img
            if cam is not None:
                alpha = HEAT_ALPHA * cam[..., None]  # the image shows through where the map is low
                rgb = (1 - alpha) * rgb + alpha * _heat(cam)
            tile = Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).resize(
                (THUMB_PX, THUMB_PX), Image.Resampling.NEAREST if img.shape[0] < THUMB_PX // 2 else Image.BILINEAR
            )
            x, y = 4 + c * (THUMB_PX + 4), CAPTION_PX + 8 + r * cell_h
            draw.text((x, y), caption, fill="darkgreen" if correct else "firebrick", font=font)
            sheet.paste(tile, (x, y + CAPTION_PX + 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)


def write_review(
    model, test, probs: np.ndarray, classes: list[str], out: Path, tracker, per_class: int, device="cpu"
) -> dict[str, Any]:
    """Write the panels and ``review.json`` under ``out/review`` and log them to the tracker's active run
    (artifact folder ``review``). Returns what ``review.json`` holds.

    ``probs``: the model's (N, K) test probabilities (what the evaluate stage scored); ``per_class``: right
    and wrong images shown per class (0: the tables only).
    """
    labels = np.asarray(test.labels)
    preds, conf = probs.argmax(1), probs.max(1)
    folder = Path(out) / ARTIFACT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    size = getattr(model, "input_size", 0)
    model = model.to(device)
    picked = {c: sum(pick_examples(labels, preds, conf, c, per_class), []) for c in range(len(classes))}
    order = [i for c in range(len(classes)) for i in picked[c]]
    cams = {}
    for start in range(0, len(order), CAM_BATCH):  # one Grad-CAM pass for every class's examples
        chunk = order[start : start + CAM_BATCH]
        x = torch.from_numpy(np.asarray(test.images[np.array(chunk)])).float().to(device) / 255.0
        cams.update(zip(chunk, grad_cam(model, x).cpu().numpy(), strict=True))
    panels: dict[str, str] = {}
    for c, name in enumerate(classes):
        chosen = picked[c]
        if not chosen:
            continue
        shown = _display(np.asarray(test.images[np.array(chosen)]), size)
        cells = [
            (img, cams[i], f"{'ok' if preds[i] == c else 'said ' + classes[preds[i]]} {conf[i]:.2f}", preds[i] == c)
            for img, i in zip(shown, chosen, strict=True)
        ]
        file = folder / f"saliency_{_slug(name)}.png"
        _thumbs(file, [cells], f"class {name}: Grad-CAM, right then wrong")
        panels[name] = f"{ARTIFACT_DIR}/{file.name}"
    pairs = confused_pairs(labels, preds, classes)
    if pairs:
        rows = []
        for p in pairs:
            idx = np.flatnonzero((labels == p["true_index"]) & (preds == p["pred_index"]))[:PAIR_EXAMPLES]
            shown = _display(np.asarray(test.images[idx]), size)
            rows.append([(img, None, f"{p['true']} -> {p['predicted']}", False) for img in shown])
        _thumbs(folder / "confused_pairs.png", rows, "most confused pairs (true -> predicted)")
    review = {
        "per_class": per_class_table(labels, preds, classes),
        "confused_pairs": [{k: p[k] for k in ("true", "predicted", "count")} for p in pairs],
        "saliency_panels": panels,
        "confused_pairs_panel": f"{ARTIFACT_DIR}/confused_pairs.png" if pairs else None,
        "run_id": getattr(tracker, "run_id", None),
        "experiment_id": getattr(tracker, "experiment_id", None),
    }
    (folder / REVIEW_FILE).write_text(json.dumps(review, indent=2))
    for file in sorted(folder.iterdir()):
        tracker.log_artifact(file, ARTIFACT_DIR)
    return review


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def card_lines(review: dict[str, Any]) -> list[str]:
    """The model card's section: the per-class table with a link to each class's saliency panel, the most
    confused pairs, and where the panels are (links into the evaluate run's artifacts in the MLflow UI)."""
    run, exp = review.get("run_id"), review.get("experiment_id")

    def link(path: str | None, text: str) -> str:
        if not path:
            return "-"
        if run and exp:  # the MLflow UI's artifact view of the evaluate run (relative: the card is shown there)
            return f"[{text}](#/experiments/{exp}/runs/{run}/artifactPath/{path})"
        return f"`{path}`"

    panels = review.get("saliency_panels", {})
    lines = [
        "## Per class (target test split)",
        "| class | test images | recall | precision | F1 | most often mistaken for | saliency |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in review["per_class"]:
        mistaken = f"{r['confused_with']} ({r['confused_count']})" if r["confused_with"] else "-"
        lines.append(
            f"| {r['class']} | {r['n']} | {_pct(r['recall'])} | {_pct(r['precision'])} | {_pct(r['f1'])} | "
            f"{mistaken} | {link(panels.get(r['class']), 'panel')} |"
        )
    pairs = review.get("confused_pairs") or []
    lines += ["", "## Most confused pairs"]
    if pairs:
        lines.append(", ".join(f"{p['true']} -> {p['predicted']} ({p['count']})" for p in pairs) + ".")
        lines.append(f"Examples: {link(review.get('confused_pairs_panel'), 'confused pairs panel')}.")
    else:
        lines.append("None: every test image was classified correctly.")
    where = f"`runs:/{run}/{ARTIFACT_DIR}`" if run else f"`{ARTIFACT_DIR}/` of the evaluate stage's output"
    lines += [
        "",
        f"Saliency panels: Grad-CAM on the last convolutional stage for the predicted class, the model's most "
        f"confident right and wrong test images per class; all panels are in {where}.",
    ]
    return lines
