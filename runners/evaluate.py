"""The one evaluation path: method -> [N, S, K] log-probabilities -> predictive probabilities -> metrics,
reliability, posterior diagnostics and prediction rows (`evaluate_set`, what runs store per evaluated set)."""
from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from methods.base import Method
from metrics import compute_metrics, posterior_diagnostics, predictive_probs, reliability
from runners.results import prediction_arrays
from tasks.types import MCExample, length_order


def predict(method: Method, examples: list[MCExample], n_samples: int, batch_size: int, seed: int,
            desc: str = "eval", point: bool = False):
    """Per-example, per-sample class log-probabilities [N, S, K_max], in the order of `examples`.

    Batches are length-bucketed (sorted by prompt length) to cut padding; every example is scored,
    the last smaller batch included, and results are put back in the input order.
    With `point` (for methods that declare `has_point_estimate`), also the log-probabilities [N, K_max] of
    the method's point estimate, scored on the same batches: returns (samples, point).
    """
    K = max(e.n_choices for e in examples)
    order = length_order(examples)
    out = np.full((len(examples), n_samples, K), -np.inf, dtype=np.float64)
    point_out = np.full((len(examples), K), -np.inf, dtype=np.float64) if point else None
    gen = torch.Generator(device=method.backbone.device).manual_seed(seed)
    with torch.no_grad():
        for i in tqdm(range(0, len(order), batch_size), desc=desc, leave=False, mininterval=2):
            idx = order[i:i + batch_size]
            batch = method.scorer.encode([examples[j] for j in idx]).to(method.backbone.device)
            logp = method.predict_logprobs(batch, n_samples, gen).float().cpu().numpy()
            if logp.shape[:2] != (len(idx), n_samples):
                raise RuntimeError(f"{method.name}.predict_logprobs returned shape {logp.shape}, "
                                   f"expected ({len(idx)}, {n_samples}, K)")
            out[idx, :, : logp.shape[2]] = logp
            if point:
                pl = method.predict_point_logprobs(batch).float().cpu().numpy()
                point_out[idx, : pl.shape[1]] = pl
    return (out, point_out) if point else out


def evaluate_set(method, examples, S: int, batch_size: int, seed: int, name: str) -> tuple[dict, list[dict]]:
    """One evaluation: metrics, reliability and diagnostics of `method` on `examples`, and the prediction rows.
    The global RNG is seeded per evaluation, so a set scores the same whatever was evaluated before it (and
    whether the method was just fitted or loaded)."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    scored = predict(method, examples, S, batch_size, seed, desc=f"eval {name}", point=method.has_point_estimate)
    logp, point = scored if method.has_point_estimate else (scored, None)
    probs = predictive_probs(logp)
    rows = [{"id": e.id, "label": e.label, "probs": [round(float(x), 7) for x in p[: e.n_choices]]}
            for e, p in zip(examples, probs)]
    # metrics from the stored (rounded) probabilities, so a reused evaluation reports exactly the same numbers
    stored, labels = prediction_arrays(rows)
    rec = {"metrics": {**compute_metrics(stored, labels),
                       "diagnostics": posterior_diagnostics(logp, None if point is None else np.exp(point))},
           "reliability": reliability(stored, labels), "n_samples": S, "eval_batch_size": batch_size,
           "seconds": time.perf_counter() - t0}
    return rec, rows
