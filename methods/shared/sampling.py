"""Batched posterior sampling of LoRA factors (the batch-expand trick).

The batch is repeated S times (`EncodedBatch.expand`) and, for the duration of one forward pass, chosen
LoRA factors (peft's `lora_A` / `lora_B` Linear modules) are swapped for `SampledLinear`s holding S weight
samples: row block s of the input is multiplied by sample s. S samples then cost one (wider) forward pass
instead of S passes. (vmap over samples fails inside bf16 attention on CPU and gave <= 1.1x anyway.)
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn


class SampledLinear(nn.Module):
    """A bias-free Linear with one weight per sample: weights [S, out, in]; input rows are sample-major."""

    def __init__(self, weights: torch.Tensor):
        super().__init__()
        self.weights = weights

    @property
    def weight(self) -> torch.Tensor:  # peft reads lora_A.weight.dtype to cast its input
        return self.weights[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        S = self.weights.shape[0]
        xs = x.reshape(S, -1, x.shape[-1])
        w = self.weights.to(xs.dtype) if not torch.is_autocast_enabled(xs.device.type) else self.weights
        y = torch.matmul(xs, w.transpose(1, 2))
        return y.reshape(*x.shape[:-1], -1)


@contextmanager
def sampled_factors(model, samples: dict):
    """`samples`: {lora Linear module: {"A": [S, r, d_in] or None, "B": [S, d_out, r] or None}}."""
    swapped = []
    try:
        for layer, ws in samples.items():
            name = layer.active_adapters[0]
            for key, container in (("A", layer.lora_A), ("B", layer.lora_B)):
                if ws.get(key) is not None:
                    swapped.append((container, name, container[name]))
                    container[name] = SampledLinear(ws[key])
        yield
    finally:
        for container, name, original in reversed(swapped):
            container[name] = original


# Attention scores per pass (rows x L^2) kept at what a deterministic batch of 8 rows of 512 tokens needs:
# expanding 8 long MMLU-chemistry rows (179-223 tokens) 10-fold cost 1.19x ten deterministic passes (0.99x
# with this bound; measured side by side), as the [rows, heads, L, L] attention tensors leave the cache,
# while short ARC rows gain from expansion and stay in one pass.
MAX_ATTENTION = 8 * 512 * 512


def samples_per_pass(rows: int, length: int, n_samples: int, max_rows: int = 256) -> int:
    return max(1, min(n_samples, max_rows // max(1, rows), MAX_ATTENTION // max(1, rows * length * length)))


def sampled_logprobs(method, model, batch, n_samples: int, draw: Callable[[int], dict],
                     max_rows: int = 256) -> torch.Tensor:
    """[B, S, K] class log-probabilities with S weight samples, in chunks of <= max_rows expanded rows
    (fewer for long rows, see MAX_ATTENTION).

    `draw(s)` returns the `samples` dict of `sampled_factors` for s samples (it owns the RNG).
    """
    rows, length = batch.input_ids.shape
    per_pass = samples_per_pass(rows, length, n_samples, max_rows)
    out = []
    done = 0
    while done < n_samples:
        s = min(per_pass, n_samples - done)
        big = batch.expand(s)
        with sampled_factors(model, draw(s)), method.backbone.autocast():
            logits = method.scorer.class_logits(model, big)
        out.append(logits.view(s, batch.size, -1).transpose(0, 1).log_softmax(-1))
        done += s
    return torch.cat(out, dim=1)


@contextmanager
def seeded_global_rng(seed: int, device: torch.device):
    """Run with torch's global RNG seeded to `seed` and restore it afterwards.

    For randomness drawn from the global RNG that cannot take a generator (nn.Dropout, flipout signs in a
    module's forward): the result is then repeatable under `seed` and leaves other code's RNG untouched.
    """
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def seed_from(generator: torch.Generator) -> int:
    """A fresh seed drawn from `generator` (so successive calls get different, repeatable streams)."""
    return int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=generator.device))
