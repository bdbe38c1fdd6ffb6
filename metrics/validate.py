"""Input checks shared by every metric. Each failure is a one-line ValueError."""
from __future__ import annotations

import numpy as np

# float32 softmax outputs drift from 1 by ~1e-7 per class; 1e-5 accepts them but
# still catches logits, unnormalised scores and per-class sigmoids.
ROW_SUM_ATOL = 1e-5


def to_numpy(x, name: str) -> np.ndarray:
    """torch tensor / array-like -> numpy array (no dtype change yet)."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as e:  # ragged lists and the like
        raise ValueError(f"{name} cannot be converted to an array: {e}") from None


def validate_inputs(probs, labels=None, *, atol: float = ROW_SUM_ATOL):
    """Check probabilities [N, K] (and labels [N] ints in [0, K)) and return float64/int64 copies.

    Values within `atol` outside [0, 1] (rounding noise) are clipped into range;
    rows are not renormalised, they must already sum to 1 within `atol`.
    Returns probs, or (probs, labels) when labels are given.
    """
    p = to_numpy(probs, "probs")
    if p.ndim != 2:
        raise ValueError(f"probs has shape {p.shape} but must be [N, K]")
    n, k = p.shape
    if n < 1:
        raise ValueError("probs has no rows (N=0)")
    if k < 2:
        raise ValueError(f"probs has K={k} classes but needs at least 2")
    if not (np.issubdtype(p.dtype, np.floating) or np.issubdtype(p.dtype, np.integer)):
        raise ValueError(f"probs has dtype {p.dtype} but must be real-valued")
    p = p.astype(np.float64)
    if not np.isfinite(p).all():
        raise ValueError(f"probs has {int((~np.isfinite(p)).sum())} non-finite entries")
    if p.min() < -atol or p.max() > 1 + atol:
        raise ValueError(f"probs out of range [0, 1] (min {p.min():.3g}, max {p.max():.3g})")
    p = np.clip(p, 0.0, 1.0)
    dev = np.abs(p.sum(axis=1) - 1.0).max()
    if dev > atol:
        raise ValueError(f"rows do not sum to 1 (max deviation {dev:.3g} > atol {atol:g})")
    if labels is None:
        return p

    y = to_numpy(labels, "labels")
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"labels has shape {y.shape} but must be [N] with N={n} to match probs")
    if not np.issubdtype(y.dtype, np.integer):  # bools and floats are rejected on purpose
        raise ValueError(f"labels has dtype {y.dtype} but must be integer")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"labels out of range [0, {k}) (min {y.min()}, max {y.max()})")
    return p, y
