"""`blob`: Bayesian Low-Rank Adaptation by Backpropagation (Wang et al., NeurIPS 2024).

A variational posterior on LoRA's A only; B stays deterministic (the paper's asymmetric Bayesianization):
  q(A) = N(M, Omega^2) entrywise, Omega = rho^2 (the paper's G^2 parametrisation; M, rho and B are trained),
  prior p(A) = N(0, beta^2) entrywise (beta = 0.2), KL(q || p) in closed form.
rho starts uniform in [eps/sqrt(2), eps] (eps = 0.05), so Omega starts in [eps^2/2, eps^2], as in the reference.

Training minimises, for minibatch i of the M minibatches of an epoch,
  CE (mean over the batch) + pi_i * KL / batch size,
i.e. Blundell et al.'s minibatch cost divided by the batch size, so that the KL is on the CE's per-example
scale. `kl_schedule`: `blundell` (the paper's KL re-weighting) pi_i = 2^(M-i) / (2^M - 1); `uniform`
pi_i = 1/M (the reference code without --bayes-klreweighting). Both sum to 1 over an epoch.
The likelihood term uses one weight sample per batch row (a sequence) by flipout (see BayesLinear).

Optimisation follows the reference code (Wang-ML-Lab/bayesian-peft, modelwrappers/blob.py): the likelihood
steps M and B with AdamW; the KL term is stepped by a second optimiser, SGD with lr `kl_lr` (0.01, the
reference scripts' --bayes-kllr), over M and rho; rho is owned by that SGD only, so it moves by the
likelihood's and the KL's gradient together, as in the reference. Before issue 11 one AdamW and one global
clip served both terms: the KL gradient (pre-clip norm ~1.6e3 at an epoch's first step) made the clip eat
the likelihood gradient, and Omega barely left its init (0.0019 -> 0.0022 on the tiny model).

Departures from the reference code, and why:
- the KL is divided by the batch size (the ELBO per example, the CE's scale); the reference adds pi_i * KL
  to the mean NLL with M rescaled from the dataset size (--bayes-datasetrescaling, gamma=8), which on
  Llama with 2-5k questions is of the same order; on our 200-1000 questions its unscaled KL would pull
  Omega to the prior's 0.2 in one epoch;
- the shared loop clips the likelihood gradient of M and B at max_grad_norm (the reference never clips);
- pi_i follows the paper (Blundell's 2^(M-i) / (2^M - 1): the first minibatches of an epoch weigh most),
  where the reference code's 2^i / (2^(M+1) - 1) puts the weight on the last ones;
- flipout signs are drawn per row (one weight sample per sequence), where the reference draws them per
  token. The logged training loss includes the pi_i * KL / batch-size term.

Test: `test_mode=sample` averages N (default 10) samples of A, batch-expanded into one forward pass;
`test_mode=mean` uses A = M (N = 0, deterministic; that one prediction is repeated for each of the S slots).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import ClassVar
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from methods.shared.adapter import lora_layers
from methods.base import ConfigError
from methods.lora import LoRA, LoRAConfig
from methods.shared.sampling import sampled_logprobs, seeded_global_rng
from methods.shared.training import train_classifier

KL_SCHEDULES = ("blundell", "uniform")
TEST_MODES = ("sample", "mean")


@dataclass
class BLoBConfig(LoRAConfig):
    beta: float = 0.2               # prior std of every entry of A
    epsilon: float = 0.05           # initial rho (Omega = rho^2) is uniform in [epsilon/sqrt(2), epsilon]
    kl_schedule: str = "blundell"   # blundell (paper) | uniform (reference default)
    kl_lr: float = 0.01             # SGD learning rate of the KL step (reference scripts: --bayes-kllr 0.01)
    test_mode: str = "sample"       # sample: N posterior samples | mean: A = M (deterministic)

    search_space: ClassVar[dict] = {**LoRAConfig.search_space, "beta": ("float", 0.05, 0.5, True),
                                    "epsilon": ("float", 0.01, 0.1, True)}

    def validate(self) -> None:
        super().validate()
        if self.beta <= 0:
            raise ConfigError(f"beta={self.beta} must be > 0 (the prior std of A, e.g. 0.2)")
        if not self.kl_lr > 0:
            raise ConfigError(f"kl_lr={self.kl_lr} must be > 0 (the KL step's SGD learning rate, e.g. 0.01)")
        if self.epsilon <= 0:
            raise ConfigError(f"epsilon={self.epsilon} must be > 0 (the initial std scale, e.g. 0.05)")
        for name, allowed in (("kl_schedule", KL_SCHEDULES), ("test_mode", TEST_MODES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")


def kl_weight(i: int, M: int, schedule: str) -> float:
    """pi_i of minibatch i (1-based) of M in an epoch."""
    if schedule == "uniform":
        return 1.0 / M
    return 2.0 ** (-i) / (1.0 - 2.0 ** (-M))  # = 2^(M-i) / (2^M - 1), with no overflow for large M


def gaussian_kl(mean: torch.Tensor, std: torch.Tensor, beta: float) -> torch.Tensor:
    """sum over entries of KL(N(mean, std^2) || N(0, beta^2))."""
    return (math.log(beta) - torch.log(std) + (std ** 2 + mean ** 2) / (2 * beta ** 2) - 0.5).sum()


class BayesLinear(nn.Module):
    """LoRA's A as a Gaussian: mean `weight` (M) and std rho^2 (Omega); it replaces peft's lora_A Linear.

    The mean is called `weight` so that peft (it reads lora_A.weight.dtype), `sampled_factors` and state
    dicts find it where they would find A. In eval mode the forward is the mean; in training mode it adds a
    flipout sample: one E ~ N(0, 1) per pass, and row b (a sequence, all its tokens) gets (Omega * E) * (s_out_b
    s_in_b^T) with random signs s. A sign-flipped centred Gaussian is again N(0, Omega^2), so every row sees an
    exact posterior sample, and the signs decorrelate rows at the cost of one extra [r, d_in] matmul.
    """

    def __init__(self, mean: torch.Tensor, rho: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(mean)
        self.rho = nn.Parameter(rho)

    @property
    def std(self) -> torch.Tensor:
        return self.rho ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight)
        if not self.training:
            return out
        lead = (x.shape[0],) + (1,) * (x.dim() - 2)  # one sign pattern per row, shared by its tokens
        s_in = torch.randint(0, 2, (*lead, x.shape[-1]), device=x.device).to(x.dtype) * 2 - 1
        s_out = torch.randint(0, 2, (*lead, out.shape[-1]), device=x.device).to(out.dtype) * 2 - 1
        noise = self.std * torch.randn_like(self.weight)
        return out + F.linear(x * s_in, noise) * s_out


class BLoB(LoRA):
    """BLoB: variational LoRA (Gaussian A, deterministic B) trained by flipout, N posterior samples at test."""

    name = "blob"
    Config = BLoBConfig
    has_point_estimate = True
    default_samples = 10

    @classmethod
    def samples_for(cls, config, requested=None) -> int:
        return 1 if config.test_mode == "mean" else super().samples_for(config, requested)

    def _wrap(self) -> None:
        """peft LoRA (A's init as in `lora`), then every lora_A swapped for a BayesLinear with that mean."""
        super()._wrap()
        g = torch.Generator().manual_seed(self.seed)
        eps = self.config.epsilon
        self.bayes: list[tuple[nn.Module, BayesLinear]] = []
        for _, layer in lora_layers(self.model):
            name = layer.active_adapters[0]
            A = layer.lora_A[name].weight.detach()
            rho = torch.empty(A.shape).uniform_(eps / math.sqrt(2), eps, generator=g)
            module = BayesLinear(A.clone(), rho.to(A.device, A.dtype))
            layer.lora_A[name] = module
            self.bayes.append((layer, module))

    def kl(self) -> torch.Tensor:
        return sum(gaussian_kl(m.weight, m.std, self.config.beta) for _, m in self.bayes)

    def fit(self, data):
        cfg, t0 = self.config, time.perf_counter()
        self._wrap()
        wrap_seconds = time.perf_counter() - t0
        per_epoch = math.ceil(len(data.train) / cfg.batch_size)  # M: the loop's minibatches per epoch
        last = {}

        def extra_loss(step: int, batch_size: int) -> torch.Tensor:
            kl = self.kl()
            pi = kl_weight(step % per_epoch + 1, per_epoch, cfg.kl_schedule)
            last.update(kl=kl.item(), pi=pi)
            return pi * kl / batch_size

        rhos = [m.rho for _, m in self.bayes]
        rho_ids = {id(r) for r in rhos}
        main = [p for p in self.model.parameters() if p.requires_grad and id(p) not in rho_ids]  # M, B
        kl_opt = torch.optim.SGD([m.weight for _, m in self.bayes] + rhos, lr=cfg.kl_lr)  # the reference's opt2
        omega_init = self._omega()
        with seeded_global_rng(self.seed, self.backbone.device):  # flipout draws from the global RNG
            stats = train_classifier(self.model, main, self, data.train, cfg, self.seed,
                                     extra_loss=extra_loss, desc=self.name, kl_optimizer=kl_opt)
        omega = self._omega()
        self.fitted = {**stats, "kl_final": last.get("kl"), "kl_schedule": cfg.kl_schedule,
                       "omega_mean": omega.mean().item(), "omega_max": omega.max().item(),
                       "posterior": {"omega_mean_init": omega_init.mean().item(), "omega_mean": omega.mean().item(),
                                     "omega_ratio_to_init": omega.mean().item() / omega_init.mean().item(),
                                     "prior_sd": cfg.beta},
                       "timings": {"wrap_seconds": wrap_seconds, "train_seconds": stats["train_seconds"],
                                   "fit_seconds": time.perf_counter() - t0}}
        return self.fitted

    def _omega(self) -> torch.Tensor:
        return torch.cat([m.std.detach().flatten() for _, m in self.bayes]).float()

    def _draw(self, gen: torch.Generator):
        def draw(s: int) -> dict:
            out = {}
            for layer, m in self.bayes:
                eps = torch.randn((s, *m.weight.shape), generator=gen, device=m.weight.device, dtype=m.weight.dtype)
                out[layer] = {"A": m.weight + m.std * eps}
            return out
        return draw

    def predict_logprobs(self, batch, n_samples, generator):
        if self.config.test_mode == "mean":
            return super().predict_logprobs(batch, n_samples, generator).repeat(1, n_samples, 1)
        return sampled_logprobs(self, self.model, batch, n_samples, self._draw(generator))

    # ---- persistence: M, rho and B as one safetensors file (not a PEFT adapter: rho has no place there)
    def save(self, path: Path) -> None:
        from safetensors.torch import save_file
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({n: p.detach().contiguous() for n, p in self.model.named_parameters() if "lora_" in n},
                  str(path / "blob.safetensors"))
        (path / "blob.json").write_text(json.dumps({"fitted": self.fitted}, indent=2))

    def load(self, path: Path) -> None:
        from safetensors.torch import load_file
        path = Path(path)
        self._wrap()
        tensors = load_file(str(path / "blob.safetensors"), device=str(self.backbone.device))
        expected = {n for n, _ in self.model.named_parameters() if "lora_" in n}
        if set(tensors) != expected:
            raise ConfigError(f"{path} does not hold BLoB weights for this backbone and LoRA settings")
        self.model.load_state_dict(tensors, strict=False)
        self.model.eval()
        self.fitted = json.loads((path / "blob.json").read_text())["fitted"]
