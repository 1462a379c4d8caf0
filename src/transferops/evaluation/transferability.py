"""Transferability scores: rank candidate backbones from one forward pass over the labelled target data.

Fine-tuning every candidate backbone costs GPU-days. The published scores below predict, from a single pass over
the target training set, which candidate will fine-tune best. Each is a pure function of numpy arrays:

- ``features`` (n, d): the candidate's penultimate-layer features of the n target examples (LogME, H-score);
- ``source_probs`` (n, |Z|): the candidate's softmax over its *source* labels Z for the same examples (LEEP, NCE);
- ``labels`` (n,): the target labels, any hashable values; at least two classes.

Higher is better for every score, so a caller scores each candidate with ``score_all``, ranks them with
``rank_table`` and, once some are fine-tuned, checks a score against the accuracies with ``kendall_tau`` or
``spearman_rho``. Bad input raises ``DataError`` with a one-line message.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np
from scipy import stats
from sklearn.covariance import ledoit_wolf

from transferops.errors import DataError

log = logging.getLogger(__name__)

PROB_ATOL = 1e-3
"""How far a row of ``source_probs`` may sum from 1 (float32 softmax drift) before it is rejected as not
probabilities; accepted rows are renormalised exactly."""

LOGME_LAMBDA_RANGE = 1e-12
"""LogME keeps the prior-to-noise ratio alpha/beta within [1e-12, 1e12] x the largest eigenvalue of F^T F: at the
top the evidence is within ~1e-12 of its alpha -> inf limit (features carry no linear signal for the class); at the
bottom the features fit the class exactly and the evidence is unbounded, so the score is a capped, very high value."""


# ---------------------------------------------------------------------------------------------------- input checks


def _labels(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Target labels as codes 0..K-1 (any hashable labels work) and the number of classes K (at least 2)."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"labels: expected a 1-D array (n,), got shape {labels.shape}")
    if labels.dtype.kind in "fc" and not np.isfinite(labels).all():
        raise DataError("labels: contain NaN or inf; expected class labels")
    classes, codes = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"labels: found {len(classes)} class; expected at least 2 classes")
    return codes, len(classes)


def _matrix(x: np.ndarray, name: str, n: int) -> np.ndarray:
    """``x`` as a finite float64 (n, dim) array, one row per label."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise DataError(f"{name}: expected a 2-D array (n, dim), got shape {x.shape}")
    if len(x) != n:
        raise DataError(f"{name}: {len(x)} rows but {n} labels; expected one row per labelled example")
    if not np.isfinite(x).all():
        raise DataError(f"{name}: {int((~np.isfinite(x)).sum())} non-finite values (NaN or inf)")
    return x


def _probs(source_probs: np.ndarray, n: int) -> np.ndarray:
    """Rows of source-label probabilities, checked and renormalised to sum to exactly 1."""
    p = _matrix(source_probs, "source_probs", n)
    if (p < 0).any():
        raise DataError("source_probs: negative entries; expected softmax probabilities, not logits")
    drift = float(np.abs(p.sum(1) - 1.0).max())
    if drift > PROB_ATOL:
        raise DataError(f"source_probs: a row sums to 1 +/- {drift:.3g}; expected probabilities summing to 1")
    return p / p.sum(1, keepdims=True)


def _class_sums(x: np.ndarray, codes: np.ndarray, k: int) -> np.ndarray:
    """(K, dim): the sum of the rows of ``x`` in each class (one-hot(labels)^T @ x without the (n, K) matrix)."""
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, codes, x)
    return sums


# ---------------------------------------------------------------------------------------------------------- LogME


def logme(features: np.ndarray, labels: np.ndarray, *, tol: float = 1e-8, max_iter: int = 1000) -> float:
    """LogME: mean over classes of the maximised log evidence per example of a Bayesian linear head.

    You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning", ICML 2021.
    For each class k, with one-hot target t (n,) and features F (n, d), the model is t = F w + noise with prior
    w ~ N(0, alpha^-1 I) and noise precision beta, so t ~ N(0, F F^T / alpha + I / beta). Its log evidence (Eq. 2)
    with A = alpha I + beta F^T F and posterior mean m = beta A^-1 F^T t is

        L(alpha, beta) = n/2 log beta + d/2 log alpha - n/2 log 2pi - beta/2 ||F m - t||^2 - alpha/2 m^T m
                         - 1/2 log|A|,

    maximised by the paper's fixed-point iteration (Algorithm 1, MacKay's updates) from alpha = beta = 1:
    gamma = sum_i beta s_i / (alpha + beta s_i) over the eigenvalues s_i of F^T F, then alpha <- gamma / m^T m and
    beta <- (n - gamma) / ||F m - t||^2. LogME = (1/K) sum_k max L_k / n. Higher is better.

    How it is computed: one thin SVD F = U S V^T serves every class and iteration. In the rotated basis
    m_i = s_i z_i / (lambda + s_i^2) with z = U^T t and lambda = alpha / beta, and
    ||F m - t||^2 = (||t||^2 - ||z||^2) + sum_i (lambda z_i / (lambda + s_i^2))^2, so an iteration costs O(rank * K)
    and n < d works like n > d (only nonzero singular values enter; d/2 log alpha - 1/2 log|A| is rewritten as
    -1/2 sum_i log(1 + s_i^2 / lambda), which stays finite as alpha grows). The iteration stops when alpha and beta
    change by less than ``tol`` (relative) for every class; features are used as given (no centring: the paper's
    model has no intercept). When the optimum lies at a boundary (features with no linear signal for a class:
    alpha -> inf; features that fit a class exactly with n > rank: beta -> inf and the evidence is unbounded), the
    diverging parameter stops where alpha / beta reaches an edge of ``LOGME_LAMBDA_RANGE``. Memory: the
    (n, min(n, d)) factor U of the SVD.
    """
    codes, k = _labels(labels)
    f = _matrix(features, "features", len(codes))
    n = len(f)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    rtol = max(f.shape) * np.finfo(float).eps  # numerical rank, as in np.linalg.matrix_rank
    keep = s > (s[0] if len(s) else 0.0) * rtol
    sigma = s[keep] ** 2  # eigenvalues of F^T F
    z = _class_sums(u[:, keep], codes, k).T  # (rank, K): U^T t for each one-hot target t
    # ||t||^2 - ||z||^2: the part of t outside span(F), which no weight vector can fit (= n_k for a zero rank);
    # rounding leaves ~eps * n_k where t lies in span(F), which is set to the exact 0 it stands for.
    counts = np.bincount(codes, minlength=k)
    outside = counts - (z**2).sum(0)
    outside[outside <= counts * rtol] = 0.0
    alpha, beta = _max_evidence(sigma, z, outside, n, tol, max_iter)
    return float(_log_evidence(alpha, beta, sigma, z, outside, n).mean() / n)


def _fit_terms(lam: np.ndarray, sigma: np.ndarray, z: np.ndarray, outside: np.ndarray) -> tuple[np.ndarray, ...]:
    """m^T m, ||F m - t||^2, gamma and rank - gamma for each class at lambda = alpha / beta (all (K,))."""
    den = lam + sigma[:, None]
    m_sq = ((np.sqrt(sigma)[:, None] * z / den) ** 2).sum(0)
    residual = outside + ((lam * z / den) ** 2).sum(0)
    gamma = (sigma[:, None] / den).sum(0)
    ungamma = (lam / den).sum(0)  # rank - gamma without cancellation (n - gamma is tiny when n <= d)
    return m_sq, residual, gamma, ungamma


def _max_evidence(
    sigma: np.ndarray, z: np.ndarray, outside: np.ndarray, n: int, tol: float, max_iter: int
) -> tuple[np.ndarray, np.ndarray]:
    """The paper's fixed-point iteration for every class at once; returns (alpha, beta), each (K,).

    A parameter heading for a boundary stops at an edge of ``LOGME_LAMBDA_RANGE``: alpha (no signal) at
    lambda_max * beta, beta (exact fit) at alpha / lambda_min."""
    scale = sigma.max() if len(sigma) else 1.0
    lam_lo, lam_hi = scale * LOGME_LAMBDA_RANGE, scale / LOGME_LAMBDA_RANGE
    alpha, beta = np.ones(z.shape[1]), np.ones(z.shape[1])  # as in Algorithm 1
    for _ in range(max_iter):
        m_sq, residual, gamma, ungamma = _fit_terms(alpha / beta, sigma, z, outside)
        with np.errstate(divide="ignore", invalid="ignore"):
            alpha_new = np.where(m_sq > 0, gamma / m_sq, np.inf)  # m = 0 (no linear signal): alpha -> inf
        beta_new = (n - len(sigma) + ungamma) / residual  # residual > 0 while lambda > 0
        alpha_new = np.minimum(alpha_new, lam_hi * beta_new)
        beta_new = np.minimum(beta_new, alpha_new / lam_lo)
        done = np.all(np.abs(alpha_new - alpha) <= tol * alpha) and np.all(np.abs(beta_new - beta) <= tol * beta)
        alpha, beta = alpha_new, beta_new
        if done:
            break
    else:
        log.warning("logme: evidence iteration did not converge in %d iterations; the score is approximate", max_iter)
    return alpha, beta


def _log_evidence(
    alpha: np.ndarray, beta: np.ndarray, sigma: np.ndarray, z: np.ndarray, outside: np.ndarray, n: int
) -> np.ndarray:
    """L(alpha, beta) of Eq. 2 for each class."""
    lam = alpha / beta
    m_sq, residual, _, _ = _fit_terms(lam, sigma, z, outside)
    log_det_ratio = np.log1p(sigma[:, None] / lam).sum(0)
    return (
        n / 2 * np.log(beta)
        - log_det_ratio / 2  # d/2 log alpha - 1/2 log|A| = -1/2 sum_i log(1 + s_i^2 / lambda)
        - beta / 2 * residual
        - alpha / 2 * m_sq
        - n / 2 * np.log(2 * np.pi)
    )


# ----------------------------------------------------------------------------------------------------------- LEEP


def leep(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP: mean log-likelihood of the target labels under the source model's "expected empirical predictor".

    Nguyen, Hassner, Seeger, Archambeau, "LEEP: A New Measure to Evaluate Transferability of Learned
    Representations", ICML 2020. With theta(x) the source model's probabilities over its labels Z:

        P(y, z) = (1/n) sum_i theta(x_i)_z 1[y_i = y],    P(y | z) = P(y, z) / P(z),
        LEEP = (1/n) sum_i log sum_z P(y_i | z) theta(x_i)_z.

    The inner sum is the probability that the "dummy" classifier, source head followed by the empirical
    conditional P(y | z), gives the true label; so LEEP <= 0, with 0 when it is certain and right. A source label
    that no example can take (P(z) = 0) has theta(x_i)_z = 0 for every i and drops out.
    """
    codes, k = _labels(labels)
    theta = _probs(source_probs, len(codes))
    joint = _class_sums(theta, codes, k) / len(codes)  # (K, |Z|)
    p_z = joint.sum(0)
    conditional = np.divide(joint, p_z, out=np.zeros_like(joint), where=p_z > 0)
    eep = (theta @ conditional.T)[np.arange(len(codes)), codes]  # > 0: P(y_i, z) >= theta(x_i)_z / n
    return float(np.log(eep).mean())


# ------------------------------------------------------------------------------------------------------------ NCE


def nce(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """NCE: the negative conditional entropy -H(Y | Z) of the target labels given the source model's hard labels.

    Tran, Nguyen, Hassner, "Transferability and Hardness of Supervised Classification Tasks", ICCV 2019. With Z the
    source label each example gets (here the argmax of ``source_probs``; ties go to the lowest index) and the
    empirical joint P(y, z) = #{i: y_i = y, z_i = z} / n:

        NCE = -H(Y | Z) = sum_{y, z} P(y, z) log (P(y, z) / P(z)).

    NCE <= 0: 0 when the source label determines the target label, -H(Y) when they are independent.
    Empty cells (P(y, z) = 0) contribute 0 (the limit of p log p).
    """
    codes, k = _labels(labels)
    theta = _probs(source_probs, len(codes))
    z = theta.argmax(1)
    joint = np.bincount(codes * theta.shape[1] + z, minlength=k * theta.shape[1]).reshape(k, -1) / len(codes)
    p_z = np.broadcast_to(joint.sum(0), joint.shape)
    seen = joint > 0
    return float((joint[seen] * np.log(joint[seen] / p_z[seen])).sum())


# -------------------------------------------------------------------------------------------------------- H-score


def h_score(features: np.ndarray, labels: np.ndarray, *, shrinkage: bool = False) -> float:
    """H-score: how much of the feature covariance is between-class covariance, tr(cov(f)^-1 cov(E[f | Y])).

    Bao et al., "An Information-Theoretic Approach to Transferability in Task Transfer Learning", ICIP 2019:
    H(f) = tr(cov(f)^-1 cov(E_{P_X|Y}[f(X) | Y])), motivated there information-theoretically as how well f can
    tell the target classes apart; in effect a multivariate ratio of between-class to total feature variance.
    Features are centred; both covariances are empirical with the same 1/n (any common factor cancels), and
    cov(E[f | Y]) = sum_k (n_k / n) mu_k mu_k^T over the centred class means mu_k. Because total covariance =
    within + between, 0 <= H <= min(d, K - 1). Higher is better.

    Pseudo-inverse: cov(f) is singular when a feature is constant or a linear combination of others (dead ReLU
    units, n <= d). The between-class covariance lives inside the range of cov(f), so the Moore-Penrose inverse
    (eigenvalues below d * eps * largest dropped) restricts the trace to the directions that vary, losing nothing;
    with a full-rank cov(f) it is the exact inverse and H is invariant to any invertible linear map of f.

    That is also its weakness: when n <= d + 1 the centred features (generically) span all n - 1 sample
    directions and H = K - 1 for *any* features, and until n is well above d the estimate is noisy.
    ``shrinkage=True`` computes the regularised H-score of Ibrahim, Ponomareva, Mazumder, "Newer is not always
    better: Rethinking transferability metrics, their peculiarities, stability and performance" (arXiv 2110.06893,
    2021; ECML PKDD 2022): cov(f) is replaced by the Ledoit-Wolf estimate (1 - a) cov(f) + a tr(cov(f))/d I with
    its optimal shrinkage a, and H = tr(cov_a(f)^-1 (1 - a) cov(E[f | Y])). On synthetic checks it ranked
    informative above random features where the plain score cannot (n <= d) or is noisy (n ~ 1.5 d, correlated
    features), but for near-isotropic features with n >> d its shrinkage (a -> 1) flattens weak signal; use it
    when n is not well above d, and compare candidates with one variant only.
    """
    codes, k = _labels(labels)
    f = _matrix(features, "features", len(codes))
    n, d = f.shape
    f = f - f.mean(0)
    counts = np.bincount(codes, minlength=k)
    means = _class_sums(f, codes, k) / counts[:, None]
    between = (means.T * (counts / n)) @ means
    if shrinkage:
        cov, a = ledoit_wolf(f, assume_centered=True)
        between = (1.0 - a) * between
    else:
        if n <= d + 1:
            log.warning("h_score: n=%d <= d+1=%d, where H = K-1 for any features; use shrinkage=True", n, d + 1)
        cov = f.T @ f / n
    return float(np.sum(np.linalg.pinv(cov, hermitian=True) * between))  # tr(P B) for symmetric B


# ---------------------------------------------------------------------------------------------- registry and table


@dataclass(frozen=True)
class Score:
    """A transferability score and the input it needs besides the labels (higher is better)."""

    fn: Callable[[np.ndarray, np.ndarray], float]
    needs: Literal["features", "source_probs"]


SCORES: dict[str, Score] = {
    "logme": Score(logme, "features"),
    "hscore": Score(h_score, "features"),
    "hscore_shrinkage": Score(partial(h_score, shrinkage=True), "features"),
    "leep": Score(leep, "source_probs"),
    "nce": Score(nce, "source_probs"),
}


def score_all(features: np.ndarray | None, source_probs: np.ndarray | None, labels: np.ndarray) -> dict[str, float]:
    """Every score in ``SCORES`` whose input is given: features for LogME/H-score, source_probs for LEEP/NCE."""
    inputs = {"features": features, "source_probs": source_probs}
    if features is None and source_probs is None:
        raise DataError("score_all: got neither features nor source_probs; expected at least one")
    return {
        name: score.fn(inputs[score.needs], labels) for name, score in SCORES.items() if inputs[score.needs] is not None
    }


def rank_table(scores_by_candidate: dict[str, dict[str, float]]) -> list[dict]:
    """One row per candidate, best first: its scores, its rank under each (1 = best) and its mean rank.

    Row keys: ``candidate``, then per score ``<score>`` (None if absent) and ``<score>_rank`` (None if absent or
    NaN), then ``mean_rank`` over the ranks it has (NaN if none). Higher scores rank first; ties share the best
    rank (1, 1, 3). Rows are sorted by mean rank, a simple consensus across scores, then by name.
    """
    names = list(scores_by_candidate)
    score_names = list(dict.fromkeys(s for scores in scores_by_candidate.values() for s in scores))
    rows = {c: {"candidate": c} for c in names}
    for s in score_names:
        values = np.array([scores_by_candidate[c].get(s, np.nan) for c in names], dtype=float)
        present = ~np.isnan(values)
        ranks = dict(zip(np.flatnonzero(present), stats.rankdata(-values[present], method="min"), strict=True))
        for i, c in enumerate(names):
            rows[c][s] = scores_by_candidate[c].get(s)
            rows[c][f"{s}_rank"] = int(ranks[i]) if i in ranks else None
    for row in rows.values():
        ranks_had = [row[f"{s}_rank"] for s in score_names if row[f"{s}_rank"] is not None]
        row["mean_rank"] = float(np.mean(ranks_had)) if ranks_had else float("nan")
    return sorted(rows.values(), key=lambda r: (np.isnan(r["mean_rank"]), r["mean_rank"], r["candidate"]))


def _paired(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Two finite 1-D arrays of one length >= 2 (a score and the fine-tuned accuracies, per candidate)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.ndim != 1 or x.shape != y.shape:
        raise DataError(f"correlation: got shapes {x.shape} and {y.shape}; expected two 1-D arrays of one length")
    if len(x) < 2:
        raise DataError(f"correlation: got {len(x)} candidate; expected at least 2")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise DataError("correlation: non-finite values (NaN or inf)")
    return x, y


def kendall_tau(a: Sequence[float], b: Sequence[float], *, weighted: bool = False) -> float:
    """Kendall's tau-b between two rankings; ``weighted`` gives the hyperbolically weighted tau (scipy's
    ``weightedtau``, the tau_w the LogME paper reports), where swaps among the top candidates count most.
    NaN when either input is constant."""
    x, y = _paired(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        result = stats.weightedtau(x, y) if weighted else stats.kendalltau(x, y)
    return float(result.statistic)


def spearman_rho(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson correlation of the ranks; ties get mean ranks). NaN for constant input."""
    x, y = _paired(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.spearmanr(x, y).statistic)
