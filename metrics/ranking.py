"""Ranking metrics on confidence scores: AUROC (misclassification / OOD) and AURC."""
from __future__ import annotations

import numpy as np

from .validate import to_numpy, validate_inputs


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x, tied values sharing the mean of their ranks."""
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # rank of the last member of each group of equal values
    return (last - (counts - 1) / 2.0)[inv]


def binary_auroc(scores, positive) -> float:
    """P(score of a random positive > score of a random negative), ties counting 1/2.

    Mann-Whitney U / (n_pos * n_neg): equals the trapezoidal area under the ROC curve.
    Convention: 0.5 (chance) when there are no positives or no negatives, so results
    are never NaN; compute_metrics reports n and acc alongside, which shows when that applies.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    pos = np.asarray(positive, dtype=bool).ravel()
    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return 0.5
    rank_sum = _average_ranks(s)[pos].sum()
    u = rank_sum - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def aurc(conf, correct) -> float:
    """Area under the risk-coverage curve of selective prediction by confidence.

    Keep the k most confident examples (k = 1..N); risk(k) = error rate among them;
    AURC = (1/N) sum_k risk(k). Lower is better; 0 when all predictions are correct.
    Ties in confidence have no natural order, so within a tied group we use the
    EXPECTED error count over random orderings (errors spread evenly through the group);
    the result is therefore independent of input order.
    """
    c = np.asarray(conf, dtype=np.float64).ravel()
    err = 1.0 - np.asarray(correct, dtype=np.float64).ravel()
    n = c.size
    if n == 0:
        raise ValueError("aurc needs at least one example")
    vals, inv, counts = np.unique(-c, return_inverse=True, return_counts=True)  # groups, most confident first
    group_err = np.bincount(inv, weights=err, minlength=vals.size)
    start = np.cumsum(counts) - counts  # examples kept before each group
    err_before = np.cumsum(group_err) - group_err
    g = np.repeat(np.arange(vals.size), counts)  # group of each coverage position, in order
    k = np.arange(1, n + 1)
    expected_err = err_before[g] + (k - start[g]) * group_err[g] / counts[g]
    return float(np.mean(expected_err / k))


def ood_auroc(conf_id, conf_ood) -> float:
    """AUROC of a score (higher = more in-distribution) separating ID (positive) from OOD."""
    a = to_numpy(conf_id, "conf_id").astype(np.float64).ravel()
    b = to_numpy(conf_ood, "conf_ood").astype(np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError(f"ood_auroc needs both ID and OOD scores (got {a.size} ID, {b.size} OOD)")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("ood_auroc scores must be finite")
    return binary_auroc(np.concatenate([a, b]), np.r_[np.ones(a.size, bool), np.zeros(b.size, bool)])


def ood_scores(probs) -> dict:
    """Standard ID-ness scores from probs [N, K]: max prob and negative entropy (nats, 0 log 0 = 0)."""
    p = validate_inputs(probs)
    plogp = p * np.log(np.where(p > 0, p, 1.0))
    return {"max_prob": p.max(axis=1), "neg_entropy": plogp.sum(axis=1)}
