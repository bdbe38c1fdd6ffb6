"""Projection families: the frozen subspaces A (r x d_in) and B (d_out x r) of LoRA-XS, from W0 [d_out, d_in].

Every family yields orthonormal input and output bases (Q_in [d_in, k], Q_out [d_out, k]); A = Q_in^T and
B = Q_out diag(s_1..s_r), s the top-r singular values of W0. LoRA-XS's `svd` is exactly U_r S_r R V_r^T this
way; giving every family the same per-direction scale means families differ only in *which* subspace R
acts in, so one learning rate serves all of them.
- `svd`: top singular vectors of W0.
- `wsvd`: SVD of W0 C^1/2, C the (damped) covariance of the module's inputs on training batches: output
  U_r, input span of C^-1/2 V_r (the input functionals whose image carries most output energy on the data).
- `dct`: rows of the orthonormal DCT-II matrices, ordered by the L1 energy of W0's 2-D DCT coefficients
  along each side (the frequencies W0 uses most), truncated to k.
- `random`: Haar-random orthonormal bases (QR of a Gaussian, sign-fixed), seeded per module.
A hybrid `dct-1/2+svd` takes half the rank from each family in order; each later family picks its
directions from W0 with the earlier families' subspaces projected out, orthogonal to them.
"""
from __future__ import annotations

import difflib
import math
from fractions import Fraction

import torch

from methods.base import ConfigError

FAMILIES = ("svd", "wsvd", "dct", "random")


def parse_projection(spec: str) -> list[tuple[str, Fraction]]:
    """'dct-1/2+svd' -> [('dct', 1/2), ('svd', 1/2)]. One term may omit its fraction (it takes the rest);
    otherwise the fractions must sum to 1."""
    terms, open_terms = [], []
    for raw in spec.split("+"):
        family, _, frac = raw.strip().partition("-")
        if family not in FAMILIES:
            close = difflib.get_close_matches(family, FAMILIES, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"projection {spec!r}: unknown family {family!r}.{hint} "
                              f"Known: {', '.join(FAMILIES)}, or hybrids such as dct-1/2+svd")
        if any(f == family for f, _ in terms):
            raise ConfigError(f"projection {spec!r} names {family} twice; give each family once")
        if frac:
            try:
                value = Fraction(frac)
            except (ValueError, ZeroDivisionError):
                raise ConfigError(f"projection {spec!r}: {frac!r} is not a fraction such as 1/2") from None
            if not 0 < value <= 1:
                raise ConfigError(f"projection {spec!r}: fraction {frac} must be in (0, 1]")
        else:
            value = None
            open_terms.append(family)
        terms.append((family, value))
    if len(open_terms) > 1:
        raise ConfigError(f"projection {spec!r}: only one family may omit its fraction (it takes the rest), "
                          f"here {', '.join(open_terms)} do")
    given = sum((v for _, v in terms if v is not None), Fraction(0))
    if open_terms:
        if given >= 1:
            raise ConfigError(f"projection {spec!r}: the given fractions sum to {given}, leaving nothing for "
                              f"{open_terms[0]}; they must sum to less than 1")
        terms = [(f, v if v is not None else 1 - given) for f, v in terms]
    elif given != 1:
        raise ConfigError(f"projection {spec!r}: hybrid fractions sum to {given}, not 1; e.g. dct-1/2+svd-1/2")
    return terms


def split_rank(terms: list[tuple[str, Fraction]], r: int) -> list[tuple[str, int]]:
    """Directions per family: floor(fraction * r), the rounding remainder going to the last family."""
    ks = [math.floor(v * r) for _, v in terms]
    ks[-1] += r - sum(ks)
    for (family, v), k in zip(terms, ks):
        if k < 1:
            raise ConfigError(f"projection: {family} gets {v} of rank r={r}, i.e. no direction; "
                              "raise r or that family's fraction")
    return [(f, k) for (f, _), k in zip(terms, ks)]


def dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix [n, n]; row k is frequency k."""
    j = torch.arange(n, dtype=torch.float64)
    d = torch.cos(math.pi * (j[None, :] + 0.5) * j[:, None] / n) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


def _svd(w, k, **_):
    u, _, vh = torch.linalg.svd(w, full_matrices=False)
    return vh[:k].T, u[:, :k]


def _wsvd(w, k, cov=None, **_):
    if cov is None:
        raise ValueError("wsvd needs the input covariance of the module")
    e, q = torch.linalg.eigh(cov.double())
    e = e.clamp(min=0) + 1e-3 * e.clamp(min=0).mean()  # damping: directions the data never excites stay finite
    u, _, vh = torch.linalg.svd(w @ (q * e.sqrt()) @ q.T, full_matrices=False)
    q_in = (q * e.rsqrt()) @ q.T @ vh[:k].T          # C^-1/2 V_r, orthonormalised below
    return torch.linalg.qr(q_in).Q, u[:, :k]


def _dct(w, k, **_):
    d_out, d_in = dct_matrix(w.shape[0]), dct_matrix(w.shape[1])
    coef = (d_out @ w @ d_in.T).abs()
    rows, cols = coef.sum(1).argsort(descending=True)[:k], coef.sum(0).argsort(descending=True)[:k]
    return d_in[cols].T, d_out[rows].T


def _haar(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None, :]  # sign fix: Haar-distributed, not QR-convention biased


def _random(w, k, gen=None, **_):
    return _haar(w.shape[1], k, gen), _haar(w.shape[0], k, gen)


BASES = {"svd": _svd, "wsvd": _wsvd, "dct": _dct, "random": _random}


def _complement(q: torch.Tensor, earlier: torch.Tensor | None, what: str) -> torch.Tensor:
    """q's columns projected off the span of `earlier` and re-orthonormalised (QR, sign-fixed)."""
    if earlier is None:
        return q
    q = q - earlier @ (earlier.T @ q)
    q, r = torch.linalg.qr(q)
    if torch.diagonal(r).abs().min() < 1e-6:
        raise ConfigError(f"the hybrid families' {what} subspaces overlap (linearly dependent directions); "
                          "use fewer directions or other families")
    return q * torch.sign(torch.diagonal(r))[None, :]


def projection(weight: torch.Tensor, split: list[tuple[str, int]], cov: torch.Tensor | None = None,
               gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(A [r, d_in], B [d_out, r]) in float64 for W0 = `weight` [d_out, d_in].

    Hybrids: each family in turn picks its directions in what the earlier families left, i.e. from W0 with
    their subspaces projected out (so `wsvd-1/2+svd` does not pick the same directions twice)."""
    w = weight.detach().double().cpu()
    q_in = q_out = None
    for family, k in split:
        rest = w
        if q_in is not None:
            rest = (w - q_out @ (q_out.T @ w)) - (w - q_out @ (q_out.T @ w)) @ q_in @ q_in.T
        i, o = BASES[family](rest, k, cov=cov, gen=gen)
        i, o = _complement(i, q_in, "input"), _complement(o, q_out, "output")
        q_in = i if q_in is None else torch.cat([q_in, i], 1)
        q_out = o if q_out is None else torch.cat([q_out, o], 1)
    r = q_in.shape[1]
    scale = torch.linalg.svdvals(w)[:r]
    return q_in.T.contiguous(), (q_out * scale[None, :]).contiguous()
