"""Imbalanced targets: class-weighted target CE, the class-balanced sampler, balanced metrics and the gate's
``register.metric``."""

from __future__ import annotations

import math
import typing
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from transferops.config import GateMetric, config_from_dict
from transferops.data.batches import BalancedBatchStream, BatchStream
from transferops.data.shards import Split
from transferops.evaluation.metrics import GATE_METRICS, balanced_accuracy, classification_report
from transferops.registry.gate import GatePolicy, decide
from transferops.stages import register
from transferops.stages.finetune import apply_class_balance, balanced_class_weights
from transferops.transfer import Strategy


def test_balanced_weights_are_n_over_k_nc():
    w = balanced_class_weights(np.array([0, 0, 0, 1]), 3)  # class 2 absent
    assert w.tolist() == pytest.approx([4 / (2 * 3), 4 / (2 * 1), 0.0])
    assert balanced_class_weights(np.array([0, 1, 2, 0, 1, 2]), 3).tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_weighted_target_ce_equals_the_hand_computed_weighted_mean():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, -1.0]])
    y = torch.tensor([0, 1, 0, 0])
    s = Strategy()
    s.class_weight = balanced_class_weights(y.numpy(), 2)  # w0 = 4/6, w1 = 2
    ce = [math.log(1 + math.exp(-2)), math.log(1 + math.exp(-1)), math.log(2), math.log(1 + math.exp(-4))]
    w = [4 / 6, 2.0, 4 / 6, 4 / 6]
    expected = sum(wi * ci for wi, ci in zip(w, ce, strict=True)) / sum(w)
    assert s.target_ce(logits, y).item() == pytest.approx(expected, rel=1e-6)
    assert s.ce(logits, y).item() == pytest.approx(sum(ce) / 4, rel=1e-6)  # source/pseudo-label CE: unweighted


def _imbalanced(n0: int = 90, n1: int = 10) -> Split:
    labels = np.array([0] * n0 + [1] * n1, dtype=np.int64)
    return Split(np.arange(len(labels), dtype=np.uint8).reshape(-1, 1, 1, 1), labels)


def test_balanced_sampler_draws_classes_uniformly_and_is_a_function_of_the_step():
    split = _imbalanced()
    balanced, plain = BalancedBatchStream(split, 64, seed=3), BatchStream(split, 64, seed=3)
    share = np.mean([(balanced.batch(s)[1] == 1).float().mean().item() for s in range(100)])
    plain_share = np.mean([(plain.batch(s)[1] == 1).float().mean().item() for s in range(100)])
    assert abs(share - 0.5) < 0.03 and abs(plain_share - 0.1) < 0.02
    assert torch.equal(balanced.indices(17), BalancedBatchStream(split, 64, seed=3).indices(17))
    assert not torch.equal(balanced.indices(17), balanced.indices(18))
    x, y = balanced.batch(5)  # rows are the images of their labels
    assert ((x.flatten() >= 90) == (y == 1)).all()
    assert balanced.steps_per_pass == plain.steps_per_pass == 1


def test_class_balance_modes_set_weights_or_a_balanced_stream():
    data = {"labeled": _imbalanced()}
    s = Strategy()
    assert apply_class_balance(s, "none", data, 2) == () and s.class_weight is None
    assert apply_class_balance(s, "sampler", data, 2) == ("labeled",) and s.class_weight is None
    assert apply_class_balance(s, "weighted", data, 2) == ()
    assert s.class_weight.tolist() == pytest.approx([100 / 180, 100 / 20])


def test_balanced_accuracy_and_report():
    labels = np.array([0] * 9 + [1])
    preds = np.zeros(10, dtype=np.int64)  # the majority class everywhere
    assert balanced_accuracy(labels, preds) == pytest.approx(0.5)
    probs = np.eye(2)[preds]
    report = classification_report(probs, labels, ["a", "b"], 5)
    assert report["accuracy"] == pytest.approx(0.9) and report["balanced_accuracy"] == pytest.approx(0.5)


def test_gate_metrics_match_the_config_literal():
    assert set(GATE_METRICS) == set(typing.get_args(GateMetric))


def test_gate_decides_on_the_chosen_metric_and_names_it():
    policy = GatePolicy(0.5, 0.0, metric="balanced_accuracy")
    refused = decide(0.55, 0.60, "1", policy)
    assert not refused.promote and refused.reason.startswith("balanced_accuracy 0.5500 < champion v1 0.6000")
    promoted = decide(0.65, 0.60, "1", policy)
    assert promoted.promote and promoted.reason.startswith("balanced_accuracy 0.6500 >=")
    assert not decide(0.45, None, None, policy).register


@pytest.mark.parametrize(("metric", "value", "promote"), [("accuracy", 0.91, True), ("balanced_accuracy", 0.55, False)])
def test_the_candidate_carries_the_configured_metric(metric, value, promote):
    """A majority-class model: 91 % accuracy, 55 % balanced accuracy, against a champion at 70 % on both."""
    cfg = config_from_dict({}, [f"register.metric={metric}"])
    inputs = SimpleNamespace(
        checkpoint={"lineage": {}, "in_channels": 1, "image_size": 8},
        model_sha256="0" * 64,
        classes=["a", "b"],
        metrics={"accuracy": 0.91, "balanced_accuracy": 0.55, "macro_f1": 0.5},
    )
    candidate, _ = register.make_candidate(cfg, inputs, None)
    assert candidate.accuracy == value
    assert decide(candidate.accuracy, 0.70, "1", GatePolicy.from_config(cfg.register)).promote is promote


def test_score_uri_computes_the_chosen_metric(monkeypatch):
    import mlflow.pytorch

    class Majority(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([[1.0, 0.0]]).repeat(len(x), 1)

    monkeypatch.setattr(mlflow.pytorch, "load_model", lambda uri, map_location: Majority())
    test = _imbalanced(9, 1)
    assert register.score_uri("models:/m/1", test, "accuracy") == pytest.approx(0.9)
    assert register.score_uri("models:/m/1", test, "balanced_accuracy") == pytest.approx(0.5)
