"""`zero_shot`: the pretrained backbone with no adapter: the floor every fine-tuned method must beat."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from methods.base import FitData, Method, MethodConfig


@dataclass
class ZeroShotConfig(MethodConfig):
    pass


class ZeroShot(Method):
    """The pretrained model scored as-is (no training)."""

    name = "zero_shot"
    Config = ZeroShotConfig

    def fit(self, data: FitData) -> dict:
        return {}

    def predict_logprobs(self, batch, n_samples, generator):
        with self.backbone.autocast():
            logits = self.scorer.class_logits(self.backbone.model, batch)
        return logits.log_softmax(-1).unsqueeze(1)

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)

    def load(self, path: Path) -> None:
        pass
