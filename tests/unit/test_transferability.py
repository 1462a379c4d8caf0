import math

import numpy as np
import pytest
from scipy.linalg import cho_factor, cho_solve
from scipy.optimize import minimize

from transferops.errors import DataError
from transferops.evaluation.transferability import (
    SCORES,
    h_score,
    kendall_tau,
    leep,
    logme,
    nce,
    rank_table,
    score_all,
    spearman_rho,
)


def informative_features(n: int, d: int, classes: int, signal: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian features whose first `classes` dimensions are shifted by `signal` toward the one-hot label."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    features = rng.normal(size=(n, d))
    features[:, :classes] += signal * np.eye(classes)[labels]
    return features, labels


def one_hot(z: list[int], width: int) -> np.ndarray:
    return np.eye(width)[z]


# ---------------------------------------------------------------------------------------------------------- LEEP


def test_leep_hand_computed_two_by_two():
    # theta = [[0.8, 0.2], [0.4, 0.6]], labels [0, 1], n = 2:
    # P(y, z) = theta / 2 -> P(0,z0)=0.4 P(0,z1)=0.1 P(1,z0)=0.2 P(1,z1)=0.3; P(z0)=0.6, P(z1)=0.4
    # P(y|z): P(0|z0)=2/3 P(1|z0)=1/3 P(0|z1)=1/4 P(1|z1)=3/4
    # EEP(x1, y=0) = 2/3*0.8 + 1/4*0.2 = 7/12 ; EEP(x2, y=1) = 1/3*0.4 + 3/4*0.6 = 7/12
    theta = np.array([[0.8, 0.2], [0.4, 0.6]])
    assert leep(theta, np.array([0, 1])) == pytest.approx(math.log(7 / 12), abs=1e-12)


def test_leep_is_zero_when_source_labels_determine_target_labels():
    labels = np.array([0, 1, 2, 0, 1, 2])
    assert leep(one_hot([0, 1, 2, 0, 1, 2], 3), labels) == pytest.approx(0.0, abs=1e-12)
    # many source labels onto one target label (z in {0, 1} -> y = 0, z in {2, 3} -> y = 1) is just as certain
    assert leep(one_hot([0, 1, 2, 3], 4), np.array([0, 0, 1, 1])) == pytest.approx(0.0, abs=1e-12)


def test_leep_of_an_uninformative_source_is_minus_label_entropy():
    # identical rows: P(y|z) = P(y), so LEEP = mean_i log P(y_i) = 3/4 log 3/4 + 1/4 log 1/4
    labels = np.array([0, 0, 0, 1])
    theta = np.tile([0.5, 0.3, 0.2], (4, 1))
    assert leep(theta, labels) == pytest.approx(0.75 * math.log(0.75) + 0.25 * math.log(0.25), abs=1e-12)


def test_leep_is_at_most_zero_and_invariant_to_permuting_source_labels():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    theta = rng.dirichlet(np.full(7, 0.3), 200)
    value = leep(theta, labels)
    assert -math.log(4) - 1.0 < value < 0.0
    assert leep(theta[:, rng.permutation(7)], labels) == pytest.approx(value, abs=1e-12)


def test_leep_equals_nce_for_hard_source_predictions():
    # with one-hot theta, EEP(x_i) = P(y_i | z_i), so LEEP = sum P(y, z) log P(y | z) = NCE
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 100)
    theta = one_hot(list((labels + rng.integers(0, 2, 100)) % 5), 5)
    assert leep(theta, labels) == pytest.approx(nce(theta, labels), abs=1e-12)
    assert nce(theta, labels) < -0.1


# ----------------------------------------------------------------------------------------------------------- NCE


def test_nce_is_zero_for_a_deterministic_mapping():
    # source labels 0, 1 -> target 0; source label 2 -> target 1
    assert nce(one_hot([0, 1, 2, 0, 1, 2], 3), np.array([0, 0, 1, 0, 0, 1])) == pytest.approx(0.0, abs=1e-12)


def test_nce_of_independent_labels_is_minus_label_entropy():
    # every (y, z) pair once in balanced binary labels: H(Y|Z) = H(Y) = log 2
    probs = one_hot([0, 1, 0, 1], 2)
    assert nce(probs, np.array([0, 0, 1, 1])) == pytest.approx(-math.log(2), abs=1e-12)


def test_nce_hand_computed_conditional_entropy():
    # counts (rows y, columns z): [[3, 0], [1, 2], [0, 2]], n = 8
    # z0 (4 examples): y = 0,0,0,1 -> H = -(3/4 log 3/4 + 1/4 log 1/4); z1 (4): y = 1,1,2,2 -> H = log 2
    # H(Y|Z) = 1/2 H(Y|z0) + 1/2 H(Y|z1)
    z = [0, 0, 0, 0, 1, 1, 1, 1]
    y = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    expected = -(0.5 * -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) + 0.5 * math.log(2))
    assert nce(one_hot(z, 2), y) == pytest.approx(expected, abs=1e-12)
    # soft probabilities with the same argmax give the same hard labels, hence the same NCE
    soft = 0.6 * one_hot(z, 2) + 0.2
    assert nce(soft, y) == pytest.approx(expected, abs=1e-12)


# --------------------------------------------------------------------------------------------------------- LogME


def brute_force_logme(features: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes of max over (log alpha, log beta) of log N(t; 0, F F^T / alpha + I / beta) / n."""
    n = len(labels)
    gram = features @ features.T
    evidences = []
    for k in np.unique(labels):
        target = (labels == k).astype(float)

        def neg_log_evidence(p, target=target):
            # -log N(t; 0, C) = 1/2 (t^T C^-1 t + log|C| + n log 2 pi), through the Cholesky factor of C
            factor = cho_factor(gram * np.exp(-p[0]) + np.eye(n) * np.exp(-p[1]))
            log_det = 2 * np.log(np.diag(factor[0])).sum()
            return 0.5 * (target @ cho_solve(factor, target) + log_det + n * math.log(2 * math.pi))

        opts = {"xatol": 1e-9, "fatol": 1e-11, "maxiter": 4000}
        best = min(
            (minimize(neg_log_evidence, x0, method="Nelder-Mead", options=opts) for x0 in [(0.0, 0.0), (3.0, 2.0)]),
            key=lambda r: r.fun,
        )
        evidences.append(-best.fun / n)
    return float(np.mean(evidences))


@pytest.mark.parametrize("n,d", [(50, 5), (20, 40)])
def test_logme_fixed_point_matches_brute_force_maximum_of_the_evidence(n, d):
    features, labels = informative_features(n, d, classes=3, signal=1.5, seed=n + d)
    assert logme(features, labels) == pytest.approx(brute_force_logme(features, labels), abs=1e-6)


def test_logme_ranks_informative_features_above_random_ones():
    informative, labels = informative_features(200, 16, classes=4, signal=2.0, seed=0)
    random = np.random.default_rng(1).normal(size=(200, 16))
    assert logme(informative, labels) > logme(random, labels) + 0.1


def noise_only_logme(labels: np.ndarray) -> float:
    """alpha -> inf forces w = 0 and t ~ N(0, I / beta), best at beta = n / n_k: L / n = 1/2 log(n / n_k) - 1/2
    - 1/2 log 2 pi, averaged over classes."""
    n, counts = len(labels), np.unique(labels, return_counts=True)[1]
    return float(np.mean([0.5 * math.log(n / nk) - 0.5 - 0.5 * math.log(2 * math.pi) for nk in counts]))


def test_logme_without_linear_signal_is_the_noise_only_evidence(caplog):
    # each feature sums to zero inside every class, so F^T t = 0 and the posterior mean is 0 for any alpha
    labels = np.array([0] * 4 + [1] * 6)
    features = np.array([[1, 2], [-1, 0], [1, -2], [-1, 0], [2, 1], [-2, 1], [1, -1], [-1, -1], [3, 0], [-3, 0]])
    assert logme(features, labels) == pytest.approx(noise_only_logme(labels), abs=1e-9)
    assert logme(np.zeros((10, 3)), labels) == pytest.approx(noise_only_logme(labels), abs=1e-9)
    # weak random features: the evidence grows with alpha up to the same limit, which the iteration must reach
    # (not stop short of, as a fixed iteration budget would) and stop at
    labels = np.arange(40) % 2
    random = np.random.default_rng(1).normal(size=(40, 3))
    with caplog.at_level("WARNING"):
        assert logme(random, labels) == pytest.approx(noise_only_logme(labels), abs=1e-9)
    assert "did not converge" not in caplog.text


def test_logme_is_invariant_to_scaling_and_rotating_the_features():
    # F -> c F Q leaves F F^T up to c^2, which alpha absorbs: the maximum evidence is unchanged
    features, labels = informative_features(60, 8, classes=3, signal=1.0, seed=2)
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(8, 8)))
    assert logme(250.0 * features @ q, labels) == pytest.approx(logme(features, labels), abs=1e-8)


def test_logme_is_finite_and_highest_when_features_fit_the_labels_exactly():
    features, labels = informative_features(60, 5, classes=3, signal=1.0, seed=4)
    exact = np.hstack([np.eye(3)[labels], features])  # the one-hot targets are in span(F): unbounded evidence
    assert math.isfinite(logme(exact, labels))
    assert logme(exact, labels) > logme(features, labels) + 1.0
    # the cap on beta is relative to the scale of F^T F, so the capped score keeps the scale invariance
    assert logme(1e3 * exact, labels) == pytest.approx(logme(exact, labels), abs=1e-6)


# ------------------------------------------------------------------------------------------------------- H-score


def test_h_score_hand_computed_one_dimensional():
    # class 0 at -1 +/- 0.5, class 1 at +1 +/- 0.5: mean 0, cov(f) = (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25,
    # class means -1, +1 with weight 1/2 each -> cov(E[f|Y]) = 1, H = 1 / 1.25
    features = np.array([[-1.5], [-0.5], [0.5], [1.5]])
    assert h_score(features, np.array([0, 0, 1, 1])) == pytest.approx(0.8, abs=1e-12)


def test_h_score_ranks_separable_features_above_noise_and_stays_within_bounds():
    separable, labels = informative_features(300, 10, classes=3, signal=3.0, seed=5)
    noise = np.random.default_rng(6).normal(size=(300, 10))
    high, low = h_score(separable, labels), h_score(noise, labels)
    assert 1.0 < high <= 2.0  # at most K - 1
    assert 0.0 <= low < 0.2


def test_h_score_is_invariant_to_invertible_linear_maps():
    features, labels = informative_features(120, 6, classes=3, signal=1.0, seed=7)
    mixing = np.random.default_rng(8).normal(size=(6, 6)) + 3 * np.eye(6)
    moved = features @ mixing + 5.0
    assert h_score(moved, labels) == pytest.approx(h_score(features, labels), abs=1e-9)


def test_h_score_degenerates_when_n_is_at_most_d_plus_one_and_shrinkage_does_not():
    # n - 1 centred samples span the whole sample space: H = K - 1 for any features, even pure noise
    informative, labels = informative_features(30, 40, classes=3, signal=3.0, seed=9)
    noise = np.random.default_rng(10).normal(size=(30, 40))
    assert h_score(noise, labels) == pytest.approx(2.0, abs=1e-9)
    assert h_score(informative, labels) == pytest.approx(2.0, abs=1e-9)
    shrunk_informative = h_score(informative, labels, shrinkage=True)
    shrunk_noise = h_score(noise, labels, shrinkage=True)
    assert 0.0 <= shrunk_noise < shrunk_informative < 2.0


# --------------------------------------------------------------------------------------------- registry and input


def test_score_all_computes_every_score_whose_input_is_given():
    features, labels = informative_features(40, 4, classes=2, signal=1.0, seed=11)
    probs = np.random.default_rng(12).dirichlet(np.ones(3), 40)
    assert set(score_all(features, None, labels)) == {"logme", "hscore", "hscore_shrinkage"}
    assert set(score_all(None, probs, labels)) == {"leep", "nce"}
    both = score_all(features, probs, labels)
    assert set(both) == set(SCORES)
    assert both["logme"] == logme(features, labels)
    assert both["hscore_shrinkage"] == h_score(features, labels, shrinkage=True)
    assert both["leep"] == leep(probs, labels)
    with pytest.raises(DataError, match="neither features nor source_probs"):
        score_all(None, None, labels)


def test_labels_may_be_any_hashable_values():
    probs = np.array([[0.8, 0.2], [0.4, 0.6]])
    assert leep(probs, np.array(["cat", "dog"])) == pytest.approx(math.log(7 / 12), abs=1e-12)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: logme(np.ones((5, 2)), np.array([0, 1, 0, 1])), "5 rows but 4 labels"),
        (lambda: h_score(np.ones((4, 2)), np.zeros(4)), "expected at least 2 classes"),
        (lambda: logme(np.array([[1.0, np.nan], [0, 1]]), np.array([0, 1])), "non-finite"),
        (lambda: h_score(np.ones(4), np.array([0, 1, 0, 1])), "expected a 2-D array"),
        (lambda: logme(np.ones((4, 2)), np.array([[0, 1], [0, 1]])), "expected a 1-D array"),
        (lambda: leep(np.array([[2.0, -1.0], [0.5, 0.5]]), np.array([0, 1])), "negative entries"),
        (lambda: nce(np.array([[0.5, 0.6], [0.5, 0.5]]), np.array([0, 1])), "sums to 1 \\+/- 0.1"),
        (lambda: leep(np.array([[0.5, 0.5], [np.inf, 0.0]]), np.array([0, 1])), "non-finite"),
        (lambda: leep(np.array([[0.5, 0.5]]), np.array([0, 1])), "1 rows but 2 labels"),
    ],
)
def test_bad_input_raises_a_one_line_data_error(call, message):
    with pytest.raises(DataError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------- ranking and agreement


def test_rank_table_ranks_each_score_and_orders_by_mean_rank():
    table = rank_table(
        {
            "resnet18": {"logme": 1.0, "leep": -0.5},
            "vit_b16": {"logme": 2.0, "leep": -0.7},
            "mobilenet": {"logme": 0.5},
        }
    )
    assert [row["candidate"] for row in table] == ["resnet18", "vit_b16", "mobilenet"]  # 1.5, 1.5 (by name), 3
    by_name = {row["candidate"]: row for row in table}
    assert by_name["vit_b16"] == {
        "candidate": "vit_b16",
        "logme": 2.0,
        "logme_rank": 1,
        "leep": -0.7,
        "leep_rank": 2,
        "mean_rank": 1.5,
    }
    assert (by_name["resnet18"]["logme_rank"], by_name["resnet18"]["leep_rank"]) == (2, 1)
    assert (by_name["mobilenet"]["leep"], by_name["mobilenet"]["leep_rank"], by_name["mobilenet"]["mean_rank"]) == (
        None,
        None,
        3.0,
    )


def test_rank_table_ties_share_the_best_rank():
    table = rank_table({"a": {"nce": -0.1}, "b": {"nce": -0.1}, "c": {"nce": -0.9}})
    assert [(row["candidate"], row["nce_rank"]) for row in table] == [("a", 1), ("b", 1), ("c", 3)]


def test_kendall_tau_and_spearman_rho_on_hand_checkable_rankings():
    # one swapped pair out of 6: tau = (5 - 1) / 6; rank differences (0, 1, -1, 0): rho = 1 - 6 * 2 / (4 * 15)
    a, b = [1, 2, 3, 4], [10, 30, 20, 40]
    assert kendall_tau(a, b) == pytest.approx(2 / 3, abs=1e-12)
    assert spearman_rho(a, b) == pytest.approx(0.8, abs=1e-12)
    assert kendall_tau(a, a[::-1]) == pytest.approx(-1.0, abs=1e-12)
    assert spearman_rho(a, a[::-1]) == pytest.approx(-1.0, abs=1e-12)
    assert kendall_tau(a, a, weighted=True) == pytest.approx(1.0, abs=1e-12)
    assert math.isnan(spearman_rho(a, [1, 1, 1, 1]))


def test_weighted_kendall_tau_punishes_swaps_among_the_best_candidates_more():
    accuracy = [0.9, 0.8, 0.7, 0.6, 0.5]
    swap_top = [0.8, 0.9, 0.7, 0.6, 0.5]
    swap_bottom = [0.9, 0.8, 0.7, 0.5, 0.6]
    assert kendall_tau(accuracy, swap_top) == pytest.approx(kendall_tau(accuracy, swap_bottom))
    assert kendall_tau(accuracy, swap_top, weighted=True) < kendall_tau(accuracy, swap_bottom, weighted=True) < 1.0


def test_correlations_reject_mismatched_input():
    with pytest.raises(DataError, match="one length"):
        kendall_tau([1, 2, 3], [1, 2])
    with pytest.raises(DataError, match="at least 2"):
        spearman_rho([1], [1])
