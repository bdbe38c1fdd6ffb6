"""Posterior predictive from per-sample class log-probabilities."""
from __future__ import annotations

import numpy as np

from .validate import to_numpy

SAMPLE_SUM_ATOL = 1e-3  # float32 log_softmax is ~1e-6 off; do log_softmax in float32, not half precision


def predictive_probs(logprobs) -> np.ndarray:
    """[N, S, K] per-sample log p(k | x, theta_s) -> [N, K] Bayesian model average.

    p(k | x) = (1/S) sum_s exp(logprobs[:, s, k]): we average PROBABILITIES over
    the S posterior samples, never logits (averaging logits is a different,
    over-confident predictor). Computed as exp(logsumexp_s - log S) so very
    negative log-probs do not underflow before the average; rows are then
    renormalised to absorb the rounding of the per-sample softmaxes.
    -inf entries (probability 0) are allowed; NaN and +inf are not.
    """
    lp = to_numpy(logprobs, "logprobs")
    if lp.ndim != 3:
        raise ValueError(f"logprobs has shape {lp.shape} but must be [N, S, K]")
    n, s, k = lp.shape
    if n < 1 or s < 1 or k < 2:
        raise ValueError(f"logprobs has shape {lp.shape}; need N >= 1, S >= 1, K >= 2")
    lp = lp.astype(np.float64)
    if np.isnan(lp).any() or np.isposinf(lp).any():
        raise ValueError("logprobs contains NaN or +inf")
    # Each sample must be a normalised distribution: catches raw logits passed by mistake,
    # which renormalisation below would otherwise silently turn into a wrong answer.
    with np.errstate(divide="ignore"):
        dev = np.abs(np.exp(lp).sum(axis=2) - 1.0).max()
    if dev > SAMPLE_SUM_ATOL:
        raise ValueError(f"exp(logprobs) rows do not sum to 1 (max deviation {dev:.3g}); pass log_softmax, not logits")

    m = lp.max(axis=1, keepdims=True)  # [N, 1, K]
    m = np.where(np.isfinite(m), m, 0.0)  # a class that is -inf in every sample: avoid -inf - -inf
    with np.errstate(divide="ignore"):  # log(0) = -inf for a class absent in every sample
        lse = np.log(np.exp(lp - m).sum(axis=1)) + m[:, 0, :]  # [N, K]
    p = np.exp(lse - np.log(s))

    z = p.sum(axis=1, keepdims=True)
    if not (z > 0).all():
        raise ValueError("some rows of logprobs have zero total probability (all -inf)")
    return p / z
