"""compute_metrics: every scalar metric from final probabilities [N, K] and labels [N]."""
from __future__ import annotations

import numpy as np

from .calibration import _check_n_bins, ece_scheme, top_label
from .validate import validate_inputs

NLL_CLAMP = 1e-12  # p_y is clamped here so a confidently wrong model gives a finite NLL (<= 27.63)


def nll_sum_count(probs, labels) -> tuple[float, int]:
    """(sum over examples of -log max(p_y, 1e-12), number of examples).

    Accumulate these over batches and divide once at the end: a mean of batch
    means is wrong whenever batches have different sizes.
    """
    p, y = validate_inputs(probs, labels)
    p_y = np.maximum(p[np.arange(len(y)), y], NLL_CLAMP)
    return float(-np.log(p_y).sum()), int(len(y))


def brier(probs, labels) -> float:
    """Multiclass Brier score: sum_k (p_k - 1[y = k])^2, averaged over examples (range [0, 2])."""
    p, y = validate_inputs(probs, labels)
    d = p.copy()
    d[np.arange(len(y)), y] -= 1.0
    return float((d * d).sum() / len(y))


def compute_metrics(probs, labels, n_bins: int = 15) -> dict:
    """All scalar metrics as plain Python floats / ints (JSON-serialisable, never NaN).

    auroc: AUROC of top-label confidence for separating correct (positive) from
    incorrect predictions; 0.5 by convention when all are correct or all are wrong.
    aurc: area under the risk-coverage curve (see ranking.aurc).
    """
    from .table import METRICS, Inputs
    n_bins = _check_n_bins(n_bins)
    p, y = validate_inputs(probs, labels)
    conf, correct = top_label(p, y)
    nll_sum, n = nll_sum_count(p, y)
    x = Inputs(p, y, conf, correct, nll_sum, n_bins)
    return {"n": n, **{name: float(m.fn(x)) for name, m in METRICS.items() if m.fn is not None},
            "ece_scheme": ece_scheme(n_bins), "n_bins": n_bins}
