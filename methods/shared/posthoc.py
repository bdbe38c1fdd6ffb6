"""Shared plumbing of post-hoc methods: take the fitted `lora` base, cache its deterministic class logits,
save and load what was fitted beside a copy of the adapter (so a saved run is self-contained)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from methods.shared.adapter import load_adapter
from methods.base import FitData, Method


class PosthocMethod(Method):
    posthoc = True
    base_method = "lora"

    def _load_adapter(self, adapter_dir: Path) -> None:
        self.model = load_adapter(self.backbone, Path(adapter_dir))

    def fit(self, data: FitData) -> dict:
        if data.base is None:
            raise ValueError(f"{self.name} is post-hoc: it needs a fitted {self.base_method} (FitData.base)")
        self.model = data.base.model
        self.fitted = self.fit_posthoc(data)
        return self.fitted

    def fit_posthoc(self, data: FitData) -> dict:
        raise NotImplementedError

    def deterministic_logits(self, examples, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """MAP class logits [N, K] and labels [N] of `examples` (computed once per call, no grad)."""
        out, labels = [], []
        K = max(e.n_choices for e in examples)
        with torch.no_grad():
            for i in range(0, len(examples), batch_size):
                batch = self.scorer.encode(examples[i:i + batch_size]).to(self.backbone.device)
                with self.backbone.autocast():
                    logits = self.scorer.class_logits(self.model, batch)
                pad = K - logits.shape[1]  # batches may hold fewer choices than the widest example
                out.append(torch.nn.functional.pad(logits.float(), (0, pad), value=float("-inf")))
                labels.append(batch.labels)
        return torch.cat(out), torch.cat(labels)

    def predict_point_logprobs(self, batch):
        """The adapter's own prediction (the MAP the post-hoc posterior is centred on)."""
        with self.backbone.autocast():
            logits = self.scorer.class_logits(self.model, batch)
        return logits.float().log_softmax(-1)

    # ---- persistence: the adapter plus a json of the fitted state ------------------------------
    def state(self) -> dict:
        return {}

    def set_state(self, state: dict) -> None:
        pass

    def save(self, path: Path) -> None:
        path = Path(path)
        self.model.save_pretrained(str(path / "adapter"))
        (path / f"{self.name}.json").write_text(json.dumps({"state": self.state(), "fitted": self.fitted}, indent=2))

    def load(self, path: Path) -> None:
        path = Path(path)
        self._load_adapter(path / "adapter")
        saved = json.loads((path / f"{self.name}.json").read_text())
        self.fitted = saved["fitted"]
        self.set_state(saved["state"])

    def trainable_parameters(self) -> int:
        return 0  # nothing is trained; what is fitted is recorded in `fitted`
