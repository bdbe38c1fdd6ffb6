"""q(U): the variational posterior over one whitened inducing matrix U (m_r x m_c); the prior is p(U) = N(0, I).

Base families:
- `diag`: U0 = M + S * E with S > 0 entrywise (mean-field);
- `matrix_normal`: U0 = M + L_r E L_c^T with lower-triangular L_r, L_c, i.e. vec(U0) has the Kronecker
  covariance (L_r L_r^T) (x) (L_c L_c^T) (row-major vec).
Either can be enriched by a zuko masked autoregressive flow f over vec(U): U = f(U0).

Direction of the flow: zuko's MAF transform is cheap (one pass) forward and sequential (one pass per feature)
backward. Training and prediction only ever need samples and the density *at those samples*, so base samples
are pushed forward through it (the inverse-autoregressive use of the same network):
log q(U) = log q0(U0) - log|det df/dU0|. The density of an arbitrary U is never needed.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

FAMILIES = ("diag", "matrix_normal")
LOG_2PI = math.log(2 * math.pi)


def inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def std_normal_logprob(x: torch.Tensor) -> torch.Tensor:
    """log N(x; 0, I) of each sample: [n, a, b] -> [n]."""
    return -0.5 * (x.pow(2) + LOG_2PI).flatten(1).sum(1)


def lower_factor(raw: torch.Tensor) -> torch.Tensor:
    """A lower-triangular factor with a positive (softplus) diagonal, from an unconstrained square matrix."""
    return torch.tril(raw, -1) + torch.diag_embed(F.softplus(raw.diagonal()))


class InducingPosterior(nn.Module):
    """q(U) for one factor. `mean` initialises M (None: zeros); every entry of U0 starts with sd `sd_init`."""

    def __init__(self, m_r: int, m_c: int, family: str = "diag", flow_depth: int = 0, flow_hidden: int = 32,
                 sd_init: float = 1e-2, mean: torch.Tensor | None = None, mean_samples: int = 1024):
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"family {family!r} is not one of {', '.join(FAMILIES)}")
        self.m_r, self.m_c, self.family, self.mean_samples = m_r, m_c, family, mean_samples
        self.loc = nn.Parameter(mean.clone() if mean is not None else torch.zeros(m_r, m_c))
        if family == "diag":
            self.sd_raw = nn.Parameter(torch.full((m_r, m_c), inverse_softplus(sd_init)))
        else:
            # each side carries sqrt(sd_init), so an entry's sd (the product of its row and column scales) is sd_init
            side = inverse_softplus(math.sqrt(sd_init))
            self.row_raw = nn.Parameter(torch.eye(m_r) * side)
            self.col_raw = nn.Parameter(torch.eye(m_c) * side)
        self.flow = None
        if flow_depth > 0:
            from zuko.flows import MAF
            self.flow = MAF(m_r * m_c, transforms=flow_depth, hidden_features=(flow_hidden, flow_hidden)).transform
            for t in self.flow.transforms:
                # zero shift and log-scale outputs: the flow starts as the identity, so q(U) starts as the base family
                nn.init.zeros_(t.hyper[-1].weight)
                nn.init.zeros_(t.hyper[-1].bias)

    @property
    def has_flow(self) -> bool:
        return self.flow is not None

    def entry_sd(self) -> torch.Tensor:
        """The std of each entry of U0 [m_r, m_c] (before the flow): how far q(U) is from a point mass."""
        if self.family == "diag":
            return F.softplus(self.sd_raw)
        lr, lc = lower_factor(self.row_raw), lower_factor(self.col_raw)
        return lr.pow(2).sum(1).sqrt()[:, None] * lc.pow(2).sum(1).sqrt()[None, :]

    def _base(self, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """U0 from standard-normal eps [n, m_r, m_c], with log q0(U0) [n] (change of variables from eps)."""
        if self.family == "diag":
            sd = F.softplus(self.sd_raw)
            return self.loc + sd * eps, std_normal_logprob(eps) - sd.log().sum()
        lr, lc = lower_factor(self.row_raw), lower_factor(self.col_raw)
        logdet = self.m_c * lr.diagonal().log().sum() + self.m_r * lc.diagonal().log().sum()
        return self.loc + lr @ eps @ lc.T, std_normal_logprob(eps) - logdet

    def rsample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n reparametrised samples U [n, m_r, m_c] and their log q(U) [n]; all noise comes from `generator`."""
        eps = torch.randn((n, self.m_r, self.m_c), generator=generator, device=self.loc.device, dtype=self.loc.dtype)
        u, log_q = self._base(eps)
        if self.flow is not None:
            y, ladj = self.flow().call_and_ladj(u.flatten(1))
            u, log_q = y.view_as(u), log_q - ladj
        return u, log_q

    def kl(self, u: torch.Tensor | None = None, log_q: torch.Tensor | None = None) -> torch.Tensor:
        """KL[q(U) || N(0, I)]: closed form without a flow; with one, the Monte Carlo estimate
        log q(U) - log p(U) averaged over the given samples (from `rsample`)."""
        if self.flow is not None:
            if u is None or log_q is None:
                raise ValueError("with a flow the KL is a Monte Carlo estimate: pass samples u and log q(u)")
            return (log_q - std_normal_logprob(u)).mean()
        n = self.m_r * self.m_c
        mean_sq = self.loc.pow(2).sum()
        if self.family == "diag":
            sd = F.softplus(self.sd_raw)
            return 0.5 * (sd.pow(2).sum() + mean_sq - n) - sd.log().sum()
        lr, lc = lower_factor(self.row_raw), lower_factor(self.col_raw)
        trace = lr.pow(2).sum() * lc.pow(2).sum()  # tr(A (x) B) = tr(A) tr(B)
        logdet = 2 * (self.m_c * lr.diagonal().log().sum() + self.m_r * lc.diagonal().log().sum())
        return 0.5 * (trace + mean_sq - n - logdet)

    @torch.no_grad()
    def mean(self) -> torch.Tensor:
        """E_q[U]: M without a flow; with one, the average of `mean_samples` draws from a fixed seed, so that it
        is a deterministic function of the parameters (a saved and reloaded model gives the same value)."""
        if self.flow is None:
            return self.loc.detach().clone()
        g = torch.Generator(device=self.loc.device).manual_seed(0)
        return self.rsample(self.mean_samples, g)[0].mean(0)
