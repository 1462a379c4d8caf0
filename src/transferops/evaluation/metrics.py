"""Metric functions on numpy arrays: scikit-learn's confusion matrix and F1, and what it lacks (per-class
recall from the matrix, calibration bins, ECE, NLL), each tested against hand-computed values."""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts; rows are true classes, columns predictions (scikit-learn's, over all K classes)."""
    from sklearn.metrics import confusion_matrix as sk_confusion

    return sk_confusion(labels, preds, labels=np.arange(num_classes)).astype(np.int64)


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Recall of each class (nan for a class absent from the split)."""
    support = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def macro_f1(labels: np.ndarray, preds: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions (scikit-learn)."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, preds, average="macro", zero_division=0))


def balanced_accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    """Mean recall over the classes present in ``labels`` (scikit-learn): on a 10:1 imbalanced split,
    predicting the majority class everywhere scores 0.5 on two classes, not 0.91."""
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(labels, preds))


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    """Share of correct predictions."""
    return float((np.asarray(preds) == np.asarray(labels)).mean())


GATE_METRICS = {"accuracy": accuracy, "balanced_accuracy": balanced_accuracy, "macro_f1": macro_f1}
"""Metrics of (labels, predictions) the promotion gate can compare (``register.metric``; a test keeps this
registry equal to ``transferops.config.GateMetric``)."""


def calibration_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> dict[str, np.ndarray]:
    """Per equal-width confidence bin: count, mean confidence and accuracy (nan for empty bins)."""
    conf = probs.max(1)
    correct = (probs.argmax(1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
    return {"lower": edges[:-1], "upper": edges[1:], "count": count, "confidence": mean_conf, "accuracy": acc}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE: sum over bins of |accuracy - confidence| weighted by the share of samples in the bin."""
    bins = calibration_bins(probs, labels, n_bins)
    weight = bins["count"] / max(1, len(labels))
    gap = np.abs(np.nan_to_num(bins["accuracy"]) - np.nan_to_num(bins["confidence"]))
    return float((weight * gap).sum())


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of the predicted probabilities."""
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())


def classification_report(probs: np.ndarray, labels: np.ndarray, classes: list[str], ece_bins: int) -> dict:
    """Every metric the evaluate stage reports, from probabilities and true labels."""
    preds = probs.argmax(1)
    cm = confusion_matrix(labels, preds, len(classes))
    return {
        "accuracy": float((preds == labels).mean()),
        "balanced_accuracy": balanced_accuracy(labels, preds),
        "macro_f1": macro_f1(labels, preds),
        "ece": expected_calibration_error(probs, labels, ece_bins),
        "nll": negative_log_likelihood(probs, labels),
        "per_class_accuracy": {c: float(a) for c, a in zip(classes, per_class_accuracy(cm), strict=True)},
        "confusion_matrix": cm,
        "calibration": calibration_bins(probs, labels, ece_bins),
    }
