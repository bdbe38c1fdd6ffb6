"""The Gaussian posterior of one LoRA weight matrix W [out, in]: N(W_MAP, (H + lam I)^-1).

`kron`: H = G (x) A (row-major vec of W), stored as eigenbases A = Q_A diag(a) Q_A^T, G = Q_G diag(g) Q_G^T.
Q_A, Q_G may be low-rank (d x n columns); directions outside the kept eigenbasis then have H = 0, so
    Sigma = sum_kept (q_G q_A)(q_G q_A)^T / (g_j a_i + lam)  +  (I - Pi) / lam,
with Pi the projector on the kept basis. Everything below (variances, log-determinant, samples) works
in that basis; no matrix of size out*in x out*in is formed.
`diag`: H = diag(h), h [out, in].

Each layer is evaluated for a vector of prior precisions `lam` [P] at once, so a grid search over the
prior costs one Jacobian pass.
"""
from __future__ import annotations

import torch


class KronLayer:
    kind = "kron"

    def __init__(self, shape, qa, ea, qg, eg):
        self.shape = tuple(shape)
        self.qa, self.ea, self.qg, self.eg = qa, ea, qg, eg
        # Complete when both eigenbases span their whole side (full factors): then Pi = I and the
        # isotropic remainder, and the per-example gradient it needs, drop out.
        self.complete = qa.shape[1] == shape[1] and qg.shape[1] == shape[0]
        self.eig = eg[:, None] * ea[None, :]  # [nG, nA] eigenvalues of G (x) A on the kept basis

    @property
    def n_params(self) -> int:
        return self.shape[0] * self.shape[1]

    def logdet(self, lam: torch.Tensor) -> torch.Tensor:
        """[P] log det(H + lam I), from the Kronecker eigenvalues; the unkept directions contribute log lam."""
        lam = lam.to(self.eig.device, torch.float64)
        kept = torch.log(self.eig.double()[None] + lam[:, None, None]).sum((1, 2))
        return kept + (self.n_params - self.eig.numel()) * torch.log(lam)

    def features(self, m: torch.Tensor):
        """What cov() needs of per-example gradients m [B, out, in]: their coordinates p in the eigenbasis,
        and, unless the basis is complete, the part r = m - Q p Q^T outside it (LoRA-sized: r x d per example),
        because the remainder (I - Pi) / lam acts on the whole layer."""
        p = torch.einsum("oj,boi,ik->bjk", self.qg, m, self.qa)
        if self.complete:
            return p, None
        return p, m - torch.einsum("oj,bjk,ik->boi", self.qg, p, self.qa)

    def cov(self, feats: list, lam: torch.Tensor) -> torch.Tensor:
        """[P, B, K, K] J Sigma J^T for the K classes' features `feats` (one per backward pass).

        <r_k, r_l> / lam, not (<m_k, m_l> - <p_k, p_l>) / lam: the difference form cancels catastrophically
        for small lam when most of the gradient lies in the kept basis."""
        p = torch.stack([f[0] for f in feats])  # [K, B, nG, nA]
        out = torch.einsum("pjk,abjk,cbjk->pbac", 1.0 / (self.eig[None] + lam[:, None, None]), p, p)
        if not self.complete:
            r = torch.stack([f[1] for f in feats]).flatten(2)  # [K, B, out*in]
            out = out + torch.einsum("abx,cbx->bac", r, r)[None] / lam[:, None, None, None]
        return out

    def sample(self, lam: float, generator: torch.Generator) -> torch.Tensor:
        """W - W_MAP ~ N(0, Sigma) as Sigma^1/2 z; Sigma^1/2 = Q diag((e + lam)^-1/2) Q^T + (I - Pi)/sqrt(lam)."""
        z = torch.randn(self.shape, generator=generator, device=generator.device).to(self.qa.device)
        pz = self.qg.T @ z @ self.qa
        delta = self.qg @ (pz / torch.sqrt(self.eig + lam)) @ self.qa.T
        if not self.complete:
            delta = delta + (z - self.qg @ pz @ self.qa.T) / lam ** 0.5
        return delta

    def state(self) -> dict[str, torch.Tensor]:
        return {"qa": self.qa, "ea": self.ea, "qg": self.qg, "eg": self.eg}

    @classmethod
    def from_state(cls, shape, t: dict[str, torch.Tensor]) -> "KronLayer":
        return cls(shape, t["qa"], t["ea"], t["qg"], t["eg"])

    def to(self, device) -> "KronLayer":
        return KronLayer(self.shape, *(x.to(device) for x in (self.qa, self.ea, self.qg, self.eg)))


class DiagLayer:
    kind = "diag"

    def __init__(self, shape, h):
        self.shape, self.h = tuple(shape), h

    @property
    def n_params(self) -> int:
        return self.h.numel()

    def logdet(self, lam: torch.Tensor) -> torch.Tensor:
        lam = lam.to(self.h.device, torch.float64)
        return torch.log(self.h.double()[None] + lam[:, None, None]).sum((1, 2))

    def features(self, m: torch.Tensor):
        return m

    def cov(self, feats: list, lam: torch.Tensor) -> torch.Tensor:
        m = torch.stack(feats)  # [K, B, out, in]
        return torch.einsum("poi,aboi,cboi->pbac", 1.0 / (self.h[None] + lam[:, None, None]), m, m)

    def sample(self, lam: float, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(self.shape, generator=generator, device=generator.device).to(self.h.device)
        return z / torch.sqrt(self.h + lam)

    def state(self) -> dict[str, torch.Tensor]:
        return {"h": self.h}

    @classmethod
    def from_state(cls, shape, t: dict[str, torch.Tensor]) -> "DiagLayer":
        return cls(shape, t["h"])

    def to(self, device) -> "DiagLayer":
        return DiagLayer(self.shape, self.h.to(device))


LAYER_KINDS = {"kron": KronLayer, "diag": DiagLayer}
