"""Evaluation plots as PNG (viewable offline) and CSV (for ``dvc plots``)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never opens a window
    import matplotlib.pyplot as plt

    return plt


def confusion_matrix_png(cm: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=90 if len(classes) > 12 else 0)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if len(classes) <= 20:
        thresh = cm.max() / 2 if cm.size else 0
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if cm[i, j] > thresh else "black",
                )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def reliability_png(bins: dict[str, np.ndarray], ece: float, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    centers = (bins["lower"] + bins["upper"]) / 2
    width = bins["upper"] - bins["lower"]
    ax.bar(centers, np.nan_to_num(bins["accuracy"]), width=width, edgecolor="black", alpha=0.8, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"Reliability diagram (ECE {ece:.3f})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def predictions_csv(labels: np.ndarray, preds: np.ndarray, classes: list[str], path: Path) -> None:
    """One row per test image: what ``dvc plots`` draws as a confusion matrix."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["actual", "predicted"])
        for a, p in zip(labels, preds, strict=True):
            w.writerow([classes[a], classes[p]])


def calibration_csv(bins: dict[str, np.ndarray], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["confidence", "accuracy", "count"])
        for conf, acc, n in zip(bins["confidence"], bins["accuracy"], bins["count"], strict=True):
            if n:
                w.writerow([f"{conf:.4f}", f"{acc:.4f}", int(n)])
