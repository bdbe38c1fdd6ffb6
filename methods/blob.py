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

Differences from the reference code: one AdamW (and the shared loop's gradient clipping) for CE and KL
together, where the reference steps the KL with a second SGD optimiser (lr 0.02), so here the KL gradient
also counts toward max_grad_norm; flipout signs are drawn per row (one weight sample per sequence), where
the reference draws them per token. The logged training loss includes the pi_i * KL / batch-size term.

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

from methods.adapter import lora_layers
from methods.base import ConfigError
from methods.lora import LoRA, LoRAConfig
from methods.sampling import sampled_logprobs, seeded_global_rng
from methods.training import train_classifier

KL_SCHEDULES = ("blundell", "uniform")
TEST_MODES = ("sample", "mean")


@dataclass
class BLoBConfig(LoRAConfig):
    beta: float = 0.2               # prior std of every entry of A
    epsilon: float = 0.05           # initial rho (Omega = rho^2) is uniform in [epsilon/sqrt(2), epsilon]
    kl_schedule: str = "blundell"   # blundell (paper) | uniform (reference default)
    test_mode: str = "sample"       # sample: N posterior samples | mean: A = M (deterministic)

    search_space: ClassVar[dict] = {**LoRAConfig.search_space, "beta": ("float", 0.05, 0.5, True),
                                    "epsilon": ("float", 0.01, 0.1, True)}

    def validate(self) -> None:
        super().validate()
        if self.beta <= 0:
            raise ConfigError(f"beta={self.beta} must be > 0 (the prior std of A, e.g. 0.2)")
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
    stochastic = True
    default_samples = 10

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

        params = [p for p in self.model.parameters() if p.requires_grad]  # M, rho, B
        with seeded_global_rng(self.seed, self.backbone.device):  # flipout draws from the global RNG
            stats = train_classifier(self.model, params, self, data.train, cfg, self.seed,
                                     extra_loss=extra_loss, desc=self.name)
        std = torch.cat([m.std.detach().flatten() for _, m in self.bayes]).float()
        self.fitted = {**stats, "kl_final": last.get("kl"), "kl_schedule": cfg.kl_schedule,
                       "omega_mean": std.mean().item(), "omega_max": std.max().item(),
                       "timings": {"wrap_seconds": wrap_seconds, "train_seconds": stats["train_seconds"],
                                   "fit_seconds": time.perf_counter() - t0}}
        return self.fitted

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
