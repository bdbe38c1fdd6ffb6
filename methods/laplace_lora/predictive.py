"""Predictives of the LoRA posterior over the K class logits.

GLM (linearised): f ~ N(f_MAP(x), J Sigma J^T). J comes from K - 1 backward passes through the hooks (one
per class k > 0, for f_k - f_0: the softmax is shift-invariant), each giving every layer's per-example
gradient sum_t g_t a_t^T, which the layer turns right away into coordinates in its Kronecker eigenbasis;
only layers with a low-rank side also keep the (LoRA-sized) part outside that basis until the passes are
done. Links: `probit` (pairwise mean-field probit, deterministic) or `mc` (average of softmax over S
Gaussian logit samples).
NN: sample the LoRA weights themselves and run the network S times.
"""
from __future__ import annotations

import math

import torch

from methods.laplace_lora.hooks import Capture, per_example_grads, row_examples

LINKS = ("probit", "mc")
PREDICTIVES = ("glm", "nn")


def glm_logits(model, scorer, backbone, layers, post: dict, batch, lam: torch.Tensor):
    """(mean [B, K], cov [P, B, K, K]) of the linearised logits, for each prior precision in `lam` [P].

    `cov` is the covariance of f - f_0 (logits relative to class 0, which every example has), not of f:
    the softmax is shift-invariant, so both links give exactly the same predictive from it, and it takes
    K - 1 backward passes instead of K (half the cost for K = 2). Row and column 0 are zero.
    """
    K = batch.choice_mask.shape[1]
    feats = {name: [] for name, _ in layers}
    rows = row_examples(batch)

    def on_grad(name, a, g):
        feats[name].append(post[name].features(per_example_grads(a, g, rows, batch.size)))

    with Capture(layers) as cap, torch.enable_grad():
        cap.on_grad = on_grad
        with backbone.autocast():
            logits = scorer.class_logits(model, batch)
        for k in range(1, K):  # d/dW (f_k - f_0); absent choice k: a zero vector (its logit stays -inf)
            v = torch.zeros_like(logits)
            v[:, k], v[:, 0] = 1.0, -1.0
            cap.backward(logits, v * batch.choice_mask[:, k:k + 1], retain_graph=k < K - 1)
    lam = lam.to(logits.device)
    cov = torch.zeros(len(lam), batch.size, K, K, device=logits.device)
    if K > 1:
        cov[:, :, 1:, 1:] = sum(post[name].cov(feats[name], lam) for name, _ in layers)
    return logits.detach().float(), cov


def probit_logprobs(mean: torch.Tensor, cov: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pairwise mean-field probit (Lu, Ie & Sha 2020, "mean-field-1/2"), renormalised:
        p_k ~ 1 / sum_j exp(-(m_k - m_j) / sqrt(1 + pi/8 var(f_k - f_j))).

    Not the common softmax(m / sqrt(1 + pi/8 var_k)) of laplace-torch: that one changes when a constant is
    added to every logit, although the softmax does not, and the loglik scorer's logits are mean token
    log-likelihoods with an arbitrary offset (about -5 on a small model); negative logits then gain
    probability from their own variance. Only differences enter here, with their full covariance, and
    for K = 2 it is the exact binary probit approximation. On random Gaussians it had 3-4x lower KL to a
    20k-sample Monte Carlo reference than either per-class form (raw or centred logits).
    Broadcasts over leading dims of mean [..., B, K] and cov [..., B, K, K]; absent choices stay -inf.
    """
    var = torch.diagonal(cov, dim1=-2, dim2=-1)
    var_diff = (var[..., :, None] + var[..., None, :] - 2 * cov).clamp(min=0)   # var(f_k - f_j)
    pair = mask[..., :, None] & mask[..., None, :]
    m = mean.masked_fill(~mask, 0)
    z = -(m[..., :, None] - m[..., None, :]) / torch.sqrt(1 + math.pi / 8 * var_diff)
    z = z.masked_fill(~pair, float("-inf"))                                       # absent j: no term
    logp = (-torch.logsumexp(z, dim=-1)).masked_fill(~mask, float("-inf"))       # j = k term is exp(0) = 1
    return logp.log_softmax(-1)


def mc_logprobs(mean: torch.Tensor, cov: torch.Tensor, mask: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log (1/S sum_s softmax(f_s)), f_s = mean + cov^1/2 z_s; z [S, B, K]; cov [..., B, K, K] -> [..., B, K].

    cov^1/2 via eigh, not Cholesky: rows of absent choices are exactly zero, so cov is only semi-definite.
    """
    e, v = torch.linalg.eigh(cov.double())
    root = (v * e.clamp(min=0).sqrt()[..., None, :]).float()        # root root^T = cov
    f = mean.masked_fill(~mask, 0) + torch.einsum("...bkj,sbj->s...bk", root, z)
    f = f.masked_fill(~mask, float("-inf"))
    return torch.logsumexp(f.log_softmax(-1), dim=0) - math.log(z.shape[0])


def glm_logprobs(mean, cov, mask, link: str, n_samples: int, generator: torch.Generator) -> torch.Tensor:
    """[..., B, K] predictive log-probabilities from the Gaussian logits."""
    if link == "probit":
        return probit_logprobs(mean, cov, mask)
    z = torch.randn((n_samples, *mean.shape), generator=generator, device=generator.device).to(mean.device)
    return mc_logprobs(mean, cov, mask, z)


@torch.no_grad()
def nn_logprobs(model, scorer, backbone, layers, post: dict, batch, lam: float, n_samples: int,
                generator: torch.Generator) -> torch.Tensor:
    """[B, K] log of the average softmax over `n_samples` networks with LoRA weights drawn from the posterior."""
    maps = {name: m.weight.detach().clone() for name, m in layers}
    out = []
    try:
        for _ in range(n_samples):
            for name, m in layers:
                m.weight.copy_(maps[name] + post[name].sample(lam, generator).to(m.weight))
            with backbone.autocast():
                out.append(scorer.class_logits(model, batch).float().log_softmax(-1))
    finally:  # never leave sampled weights in the model
        for name, m in layers:
            m.weight.copy_(maps[name])
    return torch.logsumexp(torch.stack(out), 0) - math.log(n_samples)
