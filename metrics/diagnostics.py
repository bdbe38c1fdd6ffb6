"""Posterior diagnostics: does a "Bayesian" row behave like one?

From the per-sample class log-probabilities [N, S, K] of one evaluated set (and, where the method declares
one, the predictions of its point estimate: the MAP or posterior mean its samples spread around):
- `entropy`: mean entropy of the predictive (the average of the S per-sample distributions);
- `expected_entropy`: mean over examples of the average per-sample entropy (aleatoric part);
- `mutual_information`: entropy - expected_entropy, the epistemic part (0 when all samples agree);
- `sample_spread`: mean over examples of the std over samples of the probability of the predicted class;
- `agreement_with_point`, `tv_to_point`: how often the predictive's argmax equals the point estimate's,
  and the mean total-variation distance between the two distributions;
- `confidence_above_uniform`: mean (max probability - 1/K) with K each example's number of choices.

Flags (recorded and shown by the report, so that neither is read as calibration):
- `collapsed`: tv_to_point < COLLAPSE_TV: the posterior changes no prediction measurably, the row is its MAP;
- `uniform`: confidence_above_uniform < UNIFORM_GAP: the predictive is near-uniform, and a low ECE at
  chance accuracy is then an artefact (a uniform predictor at chance accuracy is calibrated by construction).
"""
from __future__ import annotations

import numpy as np

from .predictive import predictive_probs

COLLAPSE_TV = 0.01   # mean |p - p_point|_1 / 2 below 1 probability point: no measurable effect
UNIFORM_GAP = 0.05   # mean confidence within 0.05 of 1/K


def _entropy(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(-1)


def posterior_diagnostics(logprobs: np.ndarray, point_probs: np.ndarray | None = None) -> dict:
    """Diagnostics (see module docstring) of one evaluated set; JSON-ready floats, flags as a list."""
    lp = np.asarray(logprobs, dtype=np.float64)
    pbar = predictive_probs(lp)
    ps = np.exp(lp)                                   # [N, S, K], absent choices 0
    n_choices = np.isfinite(lp[:, 0, :]).sum(1)
    pred = pbar.argmax(1)
    h = _entropy(pbar)
    eh = _entropy(ps).mean(1)
    out = {
        "samples": int(lp.shape[1]),
        "entropy": float(h.mean()),
        "expected_entropy": float(eh.mean()),
        "mutual_information": float(np.maximum(h - eh, 0.0).mean()),
        "sample_spread": float(ps[np.arange(len(pred)), :, pred].std(1).mean()),
        "confidence_above_uniform": float((pbar.max(1) - 1.0 / n_choices).mean()),
    }
    flags = []
    if point_probs is not None:
        q = np.asarray(point_probs, dtype=np.float64)
        out["agreement_with_point"] = float((q.argmax(1) == pred).mean())
        out["tv_to_point"] = float(0.5 * np.abs(pbar - q).sum(1).mean())
        if out["tv_to_point"] < COLLAPSE_TV:
            flags.append("collapsed")
    if out["confidence_above_uniform"] < UNIFORM_GAP:
        flags.append("uniform")
    out["flags"] = flags
    out["thresholds"] = {"collapse_tv": COLLAPSE_TV, "uniform_gap": UNIFORM_GAP}
    return out
