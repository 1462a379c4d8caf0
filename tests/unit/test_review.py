"""The reviewer's tables: per-class figures, the most confused pairs and the examples shown, on known labels."""

import numpy as np
import pytest

from transferops.evaluation.review import card_lines, confused_pairs, per_class_table, pick_examples

CLASSES = ["cat", "dog", "owl"]
#                  cat x4            dog x4            owl x2
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
PREDS = np.array([0, 0, 1, 1, 1, 1, 1, 0, 2, 1])


def test_per_class_table_counts_recall_precision_and_the_usual_mistake():
    rows = {r["class"]: r for r in per_class_table(LABELS, PREDS, CLASSES)}
    assert rows["cat"]["n"] == 4 and rows["cat"]["recall"] == 0.5
    assert rows["cat"]["precision"] == pytest.approx(2 / 3)  # 3 said cat, 2 were
    assert rows["cat"]["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert (rows["cat"]["confused_with"], rows["cat"]["confused_count"]) == ("dog", 2)
    assert rows["dog"]["recall"] == 0.75 and rows["dog"]["precision"] == pytest.approx(3 / 6)
    assert rows["owl"]["recall"] == 0.5 and rows["owl"]["precision"] == 1.0


def test_confused_pairs_are_the_largest_off_diagonal_counts():
    pairs = confused_pairs(LABELS, PREDS, CLASSES)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [
        ("cat", "dog", 2),
        ("dog", "cat", 1),
        ("owl", "dog", 1),
    ]
    assert confused_pairs(LABELS, LABELS, CLASSES) == []  # no mistakes, no pairs


def test_examples_are_the_most_confident_right_and_wrong_of_the_class():
    conf = np.array([0.6, 0.9, 0.99, 0.7, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    right, wrong = pick_examples(LABELS, PREDS, conf, 0, 1)
    assert right == [1] and wrong == [2]  # 0.9 beats 0.6 among right; 0.99 beats 0.7 among wrong
    assert pick_examples(LABELS, PREDS, conf, 0, 5) == ([1, 0], [2, 3])


def test_the_card_links_each_class_panel_in_the_evaluate_run():
    review = {
        "per_class": per_class_table(LABELS, PREDS, CLASSES),
        "confused_pairs": [{"true": "cat", "predicted": "dog", "count": 2}],
        "saliency_panels": {"cat": "review/saliency_cat.png"},
        "confused_pairs_panel": "review/confused_pairs.png",
        "run_id": "abc123",
        "experiment_id": "7",
    }
    text = "\n".join(card_lines(review))
    link = "[panel](#/experiments/7/runs/abc123/artifactPath/review/saliency_cat.png)"
    assert f"| cat | 4 | 50.0% | 66.7% | 57.1% | dog (2) | {link} |" in text
    assert "| dog | 4 | 75.0% | 50.0% | 60.0% | cat (1) | - |" in text
    assert "cat -> dog (2)" in text and "artifactPath/review/confused_pairs.png" in text
