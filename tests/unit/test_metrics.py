import numpy as np
import pytest
from sklearn.metrics import f1_score

from transferops.evaluation.metrics import (
    classification_report,
    confusion_matrix,
    expected_calibration_error,
    macro_f1,
    per_class_accuracy,
)


def test_confusion_and_per_class_accuracy():
    y = np.array([0, 0, 1, 1, 2])
    p = np.array([0, 1, 1, 1, 0])
    cm = confusion_matrix(y, p, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert per_class_accuracy(cm).tolist() == [0.5, 1.0, 0.0]


def test_macro_f1_matches_sklearn():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    assert macro_f1(y, p) == pytest.approx(f1_score(y, p, average="macro"))
    assert macro_f1(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 0])) == pytest.approx((0.8 + 2 / 3) / 2)  # by hand


def test_ece_hand_computed():
    # two bins (0-0.5, 0.5-1): confidences 0.9 (correct), 0.8 (wrong) in the upper bin
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    labels = np.array([0, 0])
    # upper bin: mean conf 0.85, accuracy 0.5 -> |0.5 - 0.85| * 2/2
    assert expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(0.35)
    perfect = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(perfect, np.array([0, 1]), 10) == pytest.approx(0.0)


def test_report_has_every_key():
    probs = np.eye(3)[[0, 1, 2, 0]] * 0.9 + 0.1 / 3
    r = classification_report(probs, np.array([0, 1, 2, 1]), ["a", "b", "c"], 10)
    assert r["accuracy"] == 0.75
    assert r["per_class_accuracy"] == {"a": 1.0, "b": 0.5, "c": 1.0}
    assert r["confusion_matrix"].sum() == 4
