"""`mc_dropout`: LoRA trained with dropout on the LoRA path, dropout kept on at test (Gal & Ghahramani, 2016).

The dropout is peft's `lora_dropout` (p = `dropout`, default 0.1): it masks the input of lora_A only, so the
frozen base model is untouched and its own dropout, if it has any, stays in eval mode at test. The S test
passes (default 10) are one batch-expanded forward pass: every copy of the batch draws its own masks, so each
copy is one sample of the thinned adapter.

nn.Dropout draws from torch's global RNG, which takes no generator: training runs under the run's seed, and
each test batch under a seed drawn from the evaluation's generator, so predictions are repeatable under that
generator and nobody else's RNG stream moves.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

from methods.shared.adapter import lora_layers
from methods.lora import LoRA, LoRAConfig
from methods.shared.sampling import sampled_logprobs, seed_from, seeded_global_rng


@dataclass
class MCDropoutConfig(LoRAConfig):
    dropout: float = 0.1  # lora_dropout, in training and at test ([0, 1); 0 makes it plain lora)
    search_space: ClassVar[dict] = {**LoRAConfig.search_space, "dropout": ("float", 0.05, 0.3, False)}


class MCDropout(LoRA):
    """MC dropout on the LoRA path: lora_dropout active at test, S masks in one batch-expanded pass."""

    name = "mc_dropout"
    Config = MCDropoutConfig
    has_point_estimate = True
    default_samples = 10

    def fit(self, data):
        t0 = time.perf_counter()
        with seeded_global_rng(self.seed, self.backbone.device):  # the training dropout masks
            super().fit(data)
        self.fitted["timings"] = {"train_seconds": self.fitted["train_seconds"],
                                  "fit_seconds": time.perf_counter() - t0}
        return self.fitted

    def _dropouts(self) -> list:
        return [layer.lora_dropout[name] for _, layer in lora_layers(self.model)
                for name in layer.active_adapters if name in layer.lora_dropout]

    def predict_logprobs(self, batch, n_samples, generator):
        drops = self._dropouts()
        try:
            for d in drops:  # only the LoRA dropouts go to train mode; the rest of the model stays in eval
                d.train()
            with seeded_global_rng(seed_from(generator), self.backbone.device):
                # no weights to swap: the S expanded copies differ by their dropout masks alone
                return sampled_logprobs(self, self.model, batch, n_samples, lambda s: {})
        finally:
            for d in drops:
                d.eval()
