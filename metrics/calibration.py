"""Top-label calibration: ECE, MCE and reliability-diagram bins.

Binning convention (recorded with every result as `ece_scheme`):
  * confidence = max_k p_k; the predicted class is the FIRST argmax (numpy), also used for acc.
  * n_bins equal-width bins with edges e_i = i / n_bins (the correctly rounded float64).
  * bins are left-closed [e_i, e_{i+1}), as torchmetrics (torch.bucketize(right=True) - 1):
    a confidence exactly on an inner edge belongs to the bin ABOVE it (0.6 -> [0.6, 0.667) at 15 bins).
  * the last bin is closed, [e_{n-1}, 1]: confidence exactly 1.0 lands there. torchmetrics instead
    puts 1.0 in an extra zero-width bin [1, 1]; the two agree unless 1.0 and [e_{n-1}, 1) share
    data with opposite calibration gaps (see tests). Equal to torchmetrics for all confidences < 1.
  * ECE = sum_b (n_b / N) |acc_b - conf_b| (L1, weighted by bin count); MCE = max over non-empty bins.
"""
from __future__ import annotations

import numpy as np

from .validate import validate_inputs


def ece_scheme(n_bins: int = 15) -> str:
    return (
        f"top-label (max prob, first argmax on ties), {n_bins} equal-width bins on [0,1] with edges i/{n_bins}, "
        f"bins [lo,hi) left-closed as torchmetrics, confidence exactly 1.0 in the last bin [{n_bins - 1}/{n_bins},1], "
        "ECE = sum of |acc - mean conf| weighted by bin count / N (L1); MCE = max over non-empty bins"
    )


ECE_SCHEME = ece_scheme(15)


def _check_n_bins(n_bins) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    return int(n_bins)


def bin_edges(n_bins: int) -> np.ndarray:
    # i / n rather than np.linspace: each edge is the float nearest the true boundary,
    # so e.g. a confidence of 0.6 at 15 bins sits exactly on edge 9 (same values as linspace for 15).
    return np.arange(n_bins + 1, dtype=np.float64) / n_bins


def bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each confidence under the convention above (ints in [0, n_bins))."""
    idx = np.searchsorted(bin_edges(n_bins), conf, side="right") - 1  # [e_i, e_{i+1}) -> i
    return np.clip(idx, 0, n_bins - 1)  # conf == 1.0 would be bin n_bins: fold into the last bin


def top_label(probs: np.ndarray, labels: np.ndarray):
    """(confidence, correct) per example; np.argmax picks the first maximum on ties."""
    pred = np.argmax(probs, axis=1)
    conf = probs[np.arange(len(probs)), pred]
    return conf, (pred == labels).astype(np.float64)


def _bin_stats(conf, correct, n_bins):
    """Per-bin count, summed confidence, summed correctness (float64 arrays of length n_bins)."""
    idx = bin_index(conf, n_bins)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    return count, conf_sum, acc_sum


def calibration_errors(conf, correct, n_bins: int = 15):
    """(ECE, MCE) from top-label confidence and 0/1 correctness; empty bins contribute nothing."""
    n_bins = _check_n_bins(n_bins)
    count, conf_sum, acc_sum = _bin_stats(conf, correct, n_bins)
    full = count > 0
    # |acc_b - conf_b| * n_b / N == |acc_sum_b - conf_sum_b| / N: no division by empty bins.
    ece = np.abs(acc_sum - conf_sum).sum() / count.sum()
    gaps = np.abs(acc_sum[full] - conf_sum[full]) / count[full]
    return float(ece), float(gaps.max())


def reliability(probs, labels, n_bins: int = 15) -> dict:
    """Per-bin lists for reliability diagrams (JSON-serialisable: floats, ints and None).

    mean_confidence / accuracy are None for empty bins (count 0), never NaN.
    """
    n_bins = _check_n_bins(n_bins)
    probs, labels = validate_inputs(probs, labels)
    conf, correct = top_label(probs, labels)
    count, conf_sum, acc_sum = _bin_stats(conf, correct, n_bins)
    edges = bin_edges(n_bins)
    return {
        "n_bins": n_bins,
        "ece_scheme": ece_scheme(n_bins),
        "lower": [float(e) for e in edges[:-1]],
        "upper": [float(e) for e in edges[1:]],
        "count": [int(c) for c in count],
        "mean_confidence": [float(s / c) if c else None for s, c in zip(conf_sum, count)],
        "accuracy": [float(s / c) if c else None for s, c in zip(acc_sum, count)],
    }
