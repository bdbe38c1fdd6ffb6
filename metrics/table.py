"""The one table of metrics: name, how it is computed, which direction is better, how it is shown, and
where it appears. compute_metrics, the collector, the report, the tuner and the CLI all read it, so a new
metric is one entry here.

A per-set metric's `fn` takes the per-example quantities of one evaluated set (see `Inputs`); the cross-set
metric `ood_auroc_maxprob` (ID test vs an OOD set) has no `fn` here: the runner computes it from two sets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from .calibration import calibration_errors
from .core import brier
from .ranking import aurc, binary_auroc


class Inputs(NamedTuple):
    probs: np.ndarray     # [N, K] final predictive probabilities
    labels: np.ndarray    # [N]
    conf: np.ndarray      # [N] top-label confidence
    correct: np.ndarray   # [N] 0/1, top-label (first argmax) correct
    nll_sum: float        # sum of -log max(p_y, 1e-12)
    n_bins: int


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    fn: Callable[[Inputs], float] | None   # None: computed across sets by the runner
    label: str                              # column title in tables and the CLI
    digits: int = 3
    roles: tuple[str, ...] = ("id",)        # leaderboards it appears in: "id", "ood"
    interval: bool = False                  # the report adds a bootstrap interval
    tuned: bool = False                     # an objective of `benchmark.py tune`
    printed: bool = False                   # printed by `benchmark.py run`

    def fmt(self, x) -> str:
        return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{self.digits}f}"


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("acc", True, lambda x: float(x.correct.sum() / len(x.correct)), "ACC", roles=("id", "ood"),
           interval=True, tuned=True, printed=True),
    Metric("ece", False, lambda x: calibration_errors(x.conf, x.correct, x.n_bins)[0], "ECE", roles=("id", "ood"),
           interval=True, tuned=True, printed=True),
    Metric("nll", False, lambda x: x.nll_sum / len(x.correct), "NLL", roles=("id", "ood"), interval=True,
           tuned=True, printed=True),
    Metric("brier", False, lambda x: brier(x.probs, x.labels), "Brier", printed=True),
    Metric("aurc", False, lambda x: aurc(x.conf, x.correct), "AURC"),
    Metric("mce", False, lambda x: calibration_errors(x.conf, x.correct, x.n_bins)[1], "MCE", roles=()),
    Metric("auroc", True, lambda x: binary_auroc(x.conf, x.correct.astype(bool)), "AUROC (correct vs wrong)",
           roles=()),
    Metric("mean_conf", True, lambda x: float(x.conf.sum() / len(x.conf)), "conf", roles=()),
    Metric("ood_auroc_maxprob", True, None, "OOD AUROC", roles=("ood",), printed=True),
)}


def columns(role: str) -> tuple[str, ...]:
    """The metrics a leaderboard of this role ("id" or "ood") shows, in table order."""
    return tuple(n for n, m in METRICS.items() if role in m.roles)


def tuned() -> tuple[Metric, ...]:
    return tuple(m for m in METRICS.values() if m.tuned)
