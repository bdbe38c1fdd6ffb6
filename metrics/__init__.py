"""Metrics for the Bayesian LoRA benchmark. They see only final probabilities and labels.

All computation is float64 numpy; inputs may be numpy arrays or torch tensors.
"""
from .calibration import ECE_SCHEME, bin_edges, bin_index, calibration_errors, ece_scheme, reliability, top_label
from .diagnostics import COLLAPSE_TV, UNIFORM_GAP, posterior_diagnostics
from .core import NLL_CLAMP, brier, compute_metrics, nll_sum_count
from .predictive import predictive_probs
from .table import METRICS, Metric, columns, tuned
from .ranking import aurc, binary_auroc, ood_auroc, ood_scores
from .validate import validate_inputs

__all__ = [
    "COLLAPSE_TV", "ECE_SCHEME", "METRICS", "Metric", "columns", "tuned", "NLL_CLAMP", "UNIFORM_GAP", "posterior_diagnostics", "aurc", "bin_edges", "bin_index", "binary_auroc", "brier",
    "calibration_errors", "compute_metrics", "ece_scheme", "nll_sum_count", "ood_auroc",
    "ood_scores", "predictive_probs", "reliability", "top_label", "validate_inputs",
]
