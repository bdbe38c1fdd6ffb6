"""`temperature`: temperature scaling of the trained adapter's class logits (Guo et al., 2017).

One scalar T, fitted by minimising NLL on the held-out validation split (never the test split).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from methods.base import ConfigError, MethodConfig
from methods.shared.posthoc import PosthocMethod


@dataclass
class TemperatureConfig(MethodConfig):
    max_iter: int = 100

    def validate(self) -> None:
        if self.max_iter < 1:
            raise ConfigError(f"max_iter={self.max_iter} must be >= 1")


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """argmin_T NLL(softmax(logits / T)); optimised over log T so T stays positive."""
    absent = torch.isinf(logits)  # examples with fewer choices: keep -inf out of the gradient (inf * 0 = nan)
    finite = logits.masked_fill(absent, 0.0)
    log_t = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy((finite / log_t.exp()).masked_fill(absent, float("-inf")), labels)
        loss.backward()
        return loss
    opt.step(closure)
    return float(log_t.detach().exp())


class Temperature(PosthocMethod):
    """Temperature scaling of a trained LoRA adapter, T fitted on validation NLL."""

    name = "temperature"
    Config = TemperatureConfig

    def fit_posthoc(self, data):
        logits, labels = self.deterministic_logits(data.validation)
        self.T = fit_temperature(logits, labels, self.config.max_iter)
        before = F.cross_entropy(logits, labels).item()
        after = F.cross_entropy(logits / self.T, labels).item()
        return {"temperature": self.T, "val_nll_before": before, "val_nll_after": after,
                "validation_n": len(data.validation)}

    def predict_logprobs(self, batch, n_samples, generator):
        with self.backbone.autocast():
            logits = self.scorer.class_logits(self.model, batch)
        return (logits.float() / self.T).log_softmax(-1).unsqueeze(1)

    def state(self) -> dict:
        return {"temperature": self.T}

    def set_state(self, state: dict) -> None:
        self.T = state["temperature"]
