"""`lora`: the deterministic LoRA baseline (MLE with weight_decay=0, MAP with weight_decay>0), via peft.

Its adapter (peft safetensors) is what post-hoc methods start from.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from methods.base import ConfigError, FitData, Method
from methods.shared.training import TrainConfig, train_classifier


@dataclass
class LoRAConfig(TrainConfig):
    r: int = 8                      # LoRA rank
    alpha: float = 16.0             # LoRA scale alpha / r
    dropout: float = 0.0            # lora_dropout on the LoRA path's input
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")  # adapted Linear modules (comma list)
    search_space: ClassVar[dict] = {**TrainConfig.search_space, "r": ("categorical", [4, 8, 16])}

    def validate(self) -> None:
        super().validate()
        if self.r <= 0:
            raise ConfigError(f"r={self.r} must be >= 1 (the LoRA rank, e.g. 8)")
        if not self.alpha > 0:
            raise ConfigError(f"alpha={self.alpha} must be > 0 (the LoRA scale is alpha / r, e.g. 16)")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout={self.dropout} must be in [0, 1)")
        if not self.target_modules:
            raise ConfigError("target_modules is empty; name the modules to adapt, e.g. q_proj,v_proj")

    def peft_config(self):
        from peft import LoraConfig
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), bias="none")


class LoRA(Method):
    """LoRA fine-tuning, deterministic (MLE or MAP with weight decay)."""

    name = "lora"
    Config = LoRAConfig

    def _wrap(self):
        from peft import get_peft_model
        from methods.shared.adapter import check_rank
        check_rank(self.backbone.model, self.config.target_modules, self.config.r)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)  # LoRA's A init draws from the global RNG
                self.model = get_peft_model(self.backbone.model, self.config.peft_config())
        except ValueError as e:
            raise ConfigError(f"cannot apply LoRA to this model: {e}") from e

    def fit(self, data: FitData) -> dict:
        self._wrap()
        params = [p for p in self.model.parameters() if p.requires_grad]
        stats = train_classifier(self.model, params, self, data.train, self.config, self.seed, desc=self.name)
        self.fitted = {"regime": "MAP" if self.config.weight_decay > 0 else "MLE", **stats}
        return self.fitted

    def predict_logprobs(self, batch, n_samples, generator):
        return self.predict_point_logprobs(batch).unsqueeze(1)

    def predict_point_logprobs(self, batch):
        """One plain forward in eval mode: the adapter itself (subclasses: A = M for BLoB, no dropout for MC
        dropout, member 0 for the ensemble)."""
        with self.backbone.autocast():
            logits = self.scorer.class_logits(self.model, batch)
        return logits.log_softmax(-1)

    def save(self, path: Path) -> None:
        self.model.save_pretrained(str(path))
        self.save_fitted(path)

    def load(self, path: Path) -> None:
        from methods.shared.adapter import load_adapter
        self.model = load_adapter(self.backbone, path)
        self.load_fitted(path)

    @classmethod
    def check_saved(cls, path: Path) -> None:
        from methods.shared.adapter import read_adapter_config
        read_adapter_config(path)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for n, p in self.model.named_parameters() if "lora_" in n)
