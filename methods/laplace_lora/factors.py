"""Accumulators for one side of a Kronecker factor, F = sum_i x_i x_i^T over the vectors x_i seen so far.

Small sides are kept as the full d x d matrix. Large sides (the hidden width of an LLM) are kept as a
d x n factor L with F ~ L L^T (Yang et al., Algorithm 1): each new batch of vectors is appended to L and
the result re-truncated to its top n left singular vectors, so no d x d matrix is ever formed and memory
stays O(d n) however many vectors are seen.
"""
from __future__ import annotations

import torch


class FullFactor:
    def __init__(self, d: int):
        self.d = d
        self.sum = torch.zeros(d, d, dtype=torch.float64)

    def update(self, x: torch.Tensor) -> None:
        """x: [m, d], one vector per row."""
        if x.numel():
            x = x.detach().to(torch.float64).cpu()
            self.sum += x.T @ x

    def eig(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q [d, d], e [d]) with F = Q diag(e) Q^T; e >= 0 (round-off negatives clamped)."""
        e, q = torch.linalg.eigh(self.sum)
        return q.float(), e.clamp(min=0).float()


class LowRankFactor:
    def __init__(self, d: int, rank: int):
        self.d, self.rank = d, rank
        self.L = torch.zeros(d, 0)

    def update(self, x: torch.Tensor) -> None:
        """x: [m, d]. [L, x^T] has the same Gram matrix as F + x^T x; its truncated SVD is the best rank-n fit."""
        if not x.numel():
            return
        # float32: the SVD of a d x (n + m) block is the cost of a batch, and we keep only the top n directions
        cat = torch.cat([self.L, x.detach().float().cpu().T], dim=1)
        u, s, _ = torch.linalg.svd(cat, full_matrices=False)
        n = min(self.rank, s.numel())
        self.L = u[:, :n] * s[:n]

    def eig(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q [d, n], e [n]): L L^T = Q diag(e) Q^T, Q with orthonormal columns; the complement has e = 0."""
        u, s, _ = torch.linalg.svd(self.L.double(), full_matrices=False)
        return u.float(), (s ** 2).float()


def make_factor(d: int, full_max: int, rank: int):
    return FullFactor(d) if d <= full_max else LowRankFactor(d, rank)
