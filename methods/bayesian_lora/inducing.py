"""One Bayesian LoRA factor W (d_out x d_in) with sparse-GP inducing variables in Kronecker form.

The model. Bases Z_r (m_r x d_out) and Z_c (m_c x d_in), each divided by its largest singular value, and
positive diagonals D_r, D_c give K_r = Z_r Z_r^T + D_r^2 = L_r L_r^T and K_c = Z_c Z_c^T + D_c^2 = L_c L_c^T.
Take W~ (d_out x d_in) iid N(0, 1) a priori, with inducing matrix U_k = Z_r W~ Z_c^T plus independent noise
that makes Cov(U_k) = K_r (x) K_c (see `pathwise_noise`). Whitening, U_k = L_r U L_c^T, gives p(U) = N(0, I)
and the exact Gaussian conditional

    p(W~ | U) = N(T_r L_r U L_c^T T_c, I - P_r (x) P_c),
    T_r = Z_r^T K_r^-1 (d_out x m_r),  T_c = K_c^-1 Z_c (m_c x d_in),  P_r = T_r Z_r,  P_c = Z_c^T T_c
(row-major vec throughout).

Since T_r L_r = (L_r^-1 Z_r)^T =: A_r and L_c^T T_c = L_c^-1 Z_c =: A_c, the mean is A_r U A_c (two triangular
solves with m x m factors). Under the prior, A_r U A_c has covariance P_r (x) P_c, so W~ is exactly N(0, I) a priori.

The variational conditional keeps the mean and shrinks the covariance:
q(W~ | U) = N(A_r U A_c, lam^2 (I - P_r (x) P_c)).
Two Gaussians with one mean and covariances S, lam^2 S (S full rank: D > 0 keeps P_r, P_c < I) have
KL = n (lam^2 / 2 - log lam - 1/2), n = d_out d_in, whatever U, Z and D are: `kl_conditional`.

The prior scale. The LoRA factor is W = prior_sd / sqrt(d_in) * W~, so the prior std of every entry of W is
exactly prior_sd / sqrt(d_in) (the 1/sqrt(d_in) keeps W x at one scale across widths). A fixed rescaling of
W~ leaves both KL terms unchanged.

lam = lambda_max * sigmoid(raw): smooth, never above the cap, and its gradient never dies at the cap (a clamp's would).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from methods.bayesian_lora.variational import InducingPosterior, inverse_softplus

D_INIT = 0.1    # initial D_r, D_c: K = Z Z^T + D^2 stays well conditioned when m > d (lora_A: m_r = 9 > r = 8)
D_FLOOR = 1e-4  # keeps K positive definite and the conditional covariance full rank whatever D is trained to


class Bases(NamedTuple):
    z_r: torch.Tensor  # m_r x d_out, spectral-normalised
    z_c: torch.Tensor  # m_c x d_in
    d_r: torch.Tensor  # m_r  (the diagonal of D_r)
    d_c: torch.Tensor  # m_c
    a_r: torch.Tensor  # d_out x m_r: T_r L_r, the whitened mean map (left)
    a_c: torch.Tensor  # m_c x d_in:  L_c^T T_c (right)
    t_r: torch.Tensor  # d_out x m_r: Z_r^T K_r^-1
    t_c: torch.Tensor  # m_c x d_in:  K_c^-1 Z_c


class InducingFactor(nn.Module):
    """A drop-in for a peft lora_A / lora_B Linear: forward samples W in training, uses E_q[W] in eval."""

    def __init__(self, d_out: int, d_in: int, m_r: int = 9, m_c: int = 9, *, family: str = "diag",
                 flow_depth: int = 1, flow_hidden: int = 32, sd_init: float = 1e-2, mean_init: str = "prior",
                 prior_sd: float = 0.1, lambda_init: float = 1e-3, lambda_max: float = 0.03,
                 mean_samples: int = 1024):
        super().__init__()
        if not 0 < lambda_init < lambda_max:
            raise ValueError(f"need 0 < lambda_init < lambda_max, got {lambda_init}, {lambda_max}")
        self.d_out, self.d_in, self.m_r, self.m_c = d_out, d_in, m_r, m_c
        self.lambda_max = lambda_max
        self.prior_scale = prior_sd / math.sqrt(d_in)
        # the scale of Z is irrelevant (spectral normalisation); the global RNG is seeded by the caller
        self.z_row = nn.Parameter(torch.randn(m_r, d_out) / math.sqrt(d_out))
        self.z_col = nn.Parameter(torch.randn(m_c, d_in) / math.sqrt(d_in))
        self.d_row_raw = nn.Parameter(torch.full((m_r,), inverse_softplus(D_INIT)))
        self.d_col_raw = nn.Parameter(torch.full((m_c,), inverse_softplus(D_INIT)))
        self.lam_raw = nn.Parameter(torch.tensor(math.log(lambda_init / (lambda_max - lambda_init))))
        # "prior": M is a draw from p(U) (the role of LoRA's random A init); "zero": M = 0 (LoRA's B = 0 init)
        mean = torch.randn(m_r, m_c) if mean_init == "prior" else None
        self.q = InducingPosterior(m_r, m_c, family, flow_depth, flow_hidden, sd_init, mean, mean_samples)
        self.generator: torch.Generator | None = None  # the training noise source (set by the method)
        self._kl_u: torch.Tensor | None = None          # Monte Carlo KL of the last training sample (flow only)
        self._mean_cache: tuple[tuple, torch.Tensor] | None = None
        self._last_sample: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return (f"d_out={self.d_out}, d_in={self.d_in}, m_r={self.m_r}, m_c={self.m_c}, family={self.q.family}, "
                f"flow={self.q.has_flow}")

    # ---- the conditional p(W~ | U) ---------------------------------------------------------------------------
    @property
    def lam(self) -> torch.Tensor:
        return self.lambda_max * torch.sigmoid(self.lam_raw)

    def scale_parameters(self) -> list[nn.Parameter]:
        """The posterior's scales: lambda and q(U)'s spread (they get their own learning rate)."""
        q = self.q
        spread = [q.sd_raw] if q.family == "diag" else [q.row_raw, q.col_raw]
        return [self.lam_raw, *spread]

    def bases(self) -> Bases:
        """Z, D and the maps of the conditional. The m x m algebra runs in float64 (K can be badly conditioned
        when D is small), the results come back in the parameters' dtype."""
        dtype = self.z_row.dtype
        with torch.autocast(self.z_row.device.type, enabled=False):
            z_r, z_c = (z.double() / torch.linalg.matrix_norm(z.double(), ord=2) for z in (self.z_row, self.z_col))
            d_r = F.softplus(self.d_row_raw.double()) + D_FLOOR
            d_c = F.softplus(self.d_col_raw.double()) + D_FLOOR
            l_r = torch.linalg.cholesky(z_r @ z_r.T + torch.diag(d_r ** 2))
            l_c = torch.linalg.cholesky(z_c @ z_c.T + torch.diag(d_c ** 2))
            w_r = torch.linalg.solve_triangular(l_r, z_r, upper=False)  # L_r^-1 Z_r = A_r^T
            w_c = torch.linalg.solve_triangular(l_c, z_c, upper=False)  # L_c^-1 Z_c = A_c
            t_r = torch.linalg.solve_triangular(l_r.T, w_r, upper=True).T  # (K_r^-1 Z_r)^T
            t_c = torch.linalg.solve_triangular(l_c.T, w_c, upper=True)    # K_c^-1 Z_c
        return Bases(*(t.to(dtype) for t in (z_r, z_c, d_r, d_c, w_r.T, w_c, t_r, t_c)))

    def pathwise_noise(self, n: int, generator: torch.Generator | None, b: Bases) -> torch.Tensor:
        """n draws [n, d_out, d_in] of N(0, I - P_r (x) P_c) by Matheron's rule, never forming that covariance.

        Draw a joint prior sample (W', U'_k) and subtract the part of W' that U'_k explains: W' - T_r U'_k T_c.
        Its covariance is I - 2 P_r (x) P_c + P_r (x) P_c (Cov(W', T_r U'_k T_c) = P_r (x) P_c, and so is
        Cov(T_r U'_k T_c) = T_r K_r T_r^T (x) T_c^T K_c T_c), the conditional's. The joint draw is cheap with
        the augmented bases [Z_r D_r], [Z_c D_c] and an iid (d_out + m_r) x (d_in + m_c) block [[E_W, E_2], [E_1, E_3]]:
            U'_k = [Z_r D_r] [[E_W, E_2], [E_1, E_3]] [Z_c D_c]^T
                 = Z_r E_W Z_c^T + Z_r E_2 D_c + D_r E_1 Z_c^T + D_r E_3 D_c
        has covariance K_r (x) K_c and shares exactly Z_r E_W Z_c^T with W' = E_W. Cost O(m d_out d_in) per
        draw, and no factorisation of Z Z^T (singular when m > d).
        """
        def randn(*shape):
            return torch.randn((n, *shape), generator=generator, device=b.z_r.device, dtype=b.z_r.dtype)
        e_w, e_1 = randn(self.d_out, self.d_in), randn(self.m_r, self.d_in)
        e_2, e_3 = randn(self.d_out, self.m_c), randn(self.m_r, self.m_c)
        d_r, d_c = b.d_r[:, None], b.d_c[None, :]
        u_prior = (b.z_r @ e_w @ b.z_c.T + (b.z_r @ e_2) * d_c + d_r * (e_1 @ b.z_c.T) + d_r * e_3 * d_c)
        return e_w - b.t_r @ u_prior @ b.t_c

    def conditional_mean(self, u: torch.Tensor, b: Bases) -> torch.Tensor:
        """E[W~ | U] = T_r (L_r U L_c^T) T_c = A_r U A_c, for U [..., m_r, m_c]."""
        return b.a_r @ u @ b.a_c

    # ---- samples and the posterior mean ----------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n weight samples [n, d_out, d_in] from q(W) = int q(W | U) q(U) dU, in float32 even under autocast."""
        with torch.autocast(self.z_row.device.type, enabled=False):
            b = self.bases()
            u, log_q = self.q.rsample(n, generator)
            if self.q.has_flow:
                self._kl_u = self.q.kl(u, log_q)
            w = self.conditional_mean(u, b) + self.lam * self.pathwise_noise(n, generator, b)
            return self.prior_scale * w

    def mean_weight(self) -> torch.Tensor:
        """E_q[W] = prior_sd / sqrt(d_in) * A_r E_q[U] A_c (the noise has mean 0): the deterministic LoRA weight.

        Cached until a parameter changes in place (optimizer steps, load_state_dict, writes under no_grad);
        call `clear_cache` after writing through `.data`, which bypasses the version counters.
        """
        key = tuple(p._version for p in self.parameters())
        if self._mean_cache is None or self._mean_cache[0] != key:
            with torch.no_grad(), torch.autocast(self.z_row.device.type, enabled=False):
                w = self.prior_scale * self.conditional_mean(self.q.mean(), self.bases())
            self._mean_cache = (key, w)
        return self._mean_cache[1]

    def clear_cache(self) -> None:
        self._mean_cache = None

    @property
    def weight(self) -> torch.Tensor:
        """peft reads lora_A.weight before every forward (for its dtype) and in a merge (for its value).
        In eval that is the posterior mean; in training the last sample, which saves a mean per step."""
        if self.training and self._last_sample is not None:
            return self._last_sample
        return self.mean_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:  # one sample per training forward, shared by every row of the batch
            w = self.sample(1, self.generator)[0]
            self._last_sample = w.detach()
        else:
            w = self.mean_weight()
        return F.linear(x, w if torch.is_autocast_enabled(x.device.type) else w.to(x.dtype))

    # ---- KL terms ---------------------------------------------------------------------------------------------
    def kl_inducing(self) -> torch.Tensor:
        """KL[q(U) || p(U)]: closed form, or with a flow the Monte Carlo value at the last training sample."""
        if self.q.has_flow:
            if self._kl_u is None:
                raise RuntimeError("no training sample drawn yet: the flow's KL is estimated at the forward's sample")
            return self._kl_u
        return self.q.kl()

    def kl_conditional(self) -> torch.Tensor:
        """KL[q(W~|U) || p(W~|U)] = n (lam^2/2 - log lam - 1/2), the same for every U."""
        log_lam = math.log(self.lambda_max) + F.logsigmoid(self.lam_raw)
        return self.d_out * self.d_in * (0.5 * self.lam ** 2 - log_lam - 0.5)
