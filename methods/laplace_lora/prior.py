"""Choosing the prior precision lam of the isotropic Gaussian prior N(0, 1/lam I) on the LoRA weights.

`marglik`: the Laplace log marginal likelihood of the training set,
    log p(D | lam) ~ log p(D | theta) - lam/2 |theta|^2 + P/2 log lam - 1/2 log det(H + lam I),
with log det from the Kronecker (or diagonal) eigenvalues; maximised over a log grid, then refined by a
bounded 1-D search between the best point's neighbours (every evaluation is cheap: no data pass).
`val_nll`: the NLL of the predictive on the validation set, over the same grid (the GLM predictive gets
all grid points from one Jacobian pass; the sampled-network predictive costs a pass per grid point).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from methods.laplace_lora.predictive import glm_logits, glm_logprobs, nn_logprobs


def grid(lo: float, hi: float, n: int) -> torch.Tensor:
    return torch.logspace(math.log10(lo), math.log10(hi), n, dtype=torch.float64)


def log_marglik(post: dict, theta_sq: float, loglik: float, lam: torch.Tensor) -> torch.Tensor:
    lam = lam.double()
    n = sum(layer.n_params for layer in post.values())
    logdet = sum(layer.logdet(lam).cpu() for layer in post.values())
    return loglik - 0.5 * lam * theta_sq + 0.5 * n * torch.log(lam) - 0.5 * logdet


def choose_marglik(post: dict, theta_sq: float, loglik: float, lams: torch.Tensor) -> tuple[float, list]:
    curve = log_marglik(post, theta_sq, loglik, lams)
    i = int(torch.argmax(curve))
    best, best_val = float(lams[i]), float(curve[i])
    lo, hi = math.log(lams[max(i - 1, 0)]), math.log(lams[min(i + 1, len(lams) - 1)])
    if hi > lo:
        res = minimize_scalar(lambda x: -float(log_marglik(post, theta_sq, loglik, torch.tensor([math.exp(x)]))[0]),
                              bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
        if -res.fun > best_val:
            best = float(math.exp(res.x))
    return best, curve.tolist()


def choose_val_nll(method, examples, lams: torch.Tensor) -> tuple[float, list]:
    """argmin over `lams` of the validation NLL of `method`'s configured predictive."""
    cfg, bb = method.config, method.backbone
    gen = torch.Generator(device=bb.device)
    batches = [method.scorer.encode(examples[i:i + cfg.batch_size]).to(bb.device)
               for i in range(0, len(examples), cfg.batch_size)]
    nll = np.zeros(len(lams))
    if cfg.predictive == "glm":
        gen.manual_seed(method.seed)  # link=mc: every lam sees the same normal draws
        for batch in batches:
            mean, cov = glm_logits(method.model, method.scorer, bb, method.layers, method.posterior, batch,
                                   lams.float())
            logp = glm_logprobs(mean, cov, batch.choice_mask, cfg.link, cfg.mc_samples, gen)  # [P, B, K]
            nll -= logp[:, torch.arange(batch.size), batch.labels].sum(-1).double().cpu().numpy()
    else:
        for j, lam in enumerate(lams.tolist()):
            gen.manual_seed(method.seed)  # the same draws for every lam, so the NLL curve is not noise
            for batch in batches:
                logp = nn_logprobs(method.model, method.scorer, bb, method.layers, method.posterior, batch, lam,
                                   cfg.nn_samples, gen)
                nll[j] -= float(logp[torch.arange(batch.size), batch.labels].sum())
    nll /= len(examples)
    return float(lams[int(np.argmin(nll))]), nll.tolist()
