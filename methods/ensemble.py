"""`ensemble`: a deep ensemble of M LoRA adapters (Lakshminarayanan et al., 2017) on one frozen backbone.

Member i is a `lora` adapter trained from seed `seed + 1000 * i` (LoRA init and data order); member 0 therefore
is exactly the `lora` run of the run's seed with the same settings (bit for bit with dropout 0, the default:
`lora` does not seed its dropout masks, members trained here do). The runner hands that fit over loaded
(`base_method = "lora"`, `base_settings`: it finds or first trains it, as for post-hoc methods), so only
members 1..M-1 are trained here; without a base (FitData.base = None) member 0 is trained here too.

Members are separate peft adapters on one PeftModel ("default" = member 0, then "member1", ...), switched with
set_adapter. predict_logprobs returns each member's log-softmax as one of S = M samples, so the predictive
(metrics.predictive_probs) averages PROBABILITIES over members. The reference code averages logits, an
over-confident predictor; we don't. S is always M: the runner asks for M (`samples_for`), whatever
--samples says; a caller asking predict for another S gets the shape check's error.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from methods.shared.adapter import load_adapter
from methods.base import ConfigError
from methods.lora import LoRA, LoRAConfig
from methods.shared.sampling import seeded_global_rng
from methods.shared.training import train_classifier

SEED_STRIDE = 1000  # member i trains from seed + SEED_STRIDE * i


@dataclass
class EnsembleConfig(LoRAConfig):
    members: int = 3

    def validate(self) -> None:
        super().validate()
        if self.members < 1:
            raise ConfigError(f"members={self.members} must be >= 1 (the number of adapters, e.g. 3)")


class Ensemble(LoRA):
    """Deep ensemble of LoRA adapters (member 0 = the lora run of the same seed); averages probabilities."""

    name = "ensemble"
    Config = EnsembleConfig
    has_point_estimate = True
    default_samples = 3
    base_method = "lora"  # member 0: the lora fit of the same seed and LoRA settings (FitData.base)

    @classmethod
    def samples_for(cls, config: EnsembleConfig, requested=None) -> int:
        return config.members  # one sample per member, whatever was asked

    @classmethod
    def base_settings(cls, config: EnsembleConfig, given: dict) -> dict:
        """Member 0 is the lora fit of the ensemble's own LoRA settings (not of --base-set)."""
        from methods.lora import LoRAConfig
        fields = LoRAConfig.__dataclass_fields__
        return {k: v for k, v in config.to_dict().items() if k in fields}

    @property
    def adapter_names(self) -> list[str]:
        return ["default"] + [f"member{i}" for i in range(1, self.config.members)]

    def _check_base(self, base) -> None:
        """Member 0 must be a lora adapter of this ensemble's LoRA shape."""
        got, want = base.model.peft_config["default"], self.config.peft_config()
        pairs = {"r": (got.r, want.r), "alpha": (got.lora_alpha, want.lora_alpha),
                 "dropout": (got.lora_dropout, want.lora_dropout),
                 "target_modules": (sorted(got.target_modules or []), sorted(want.target_modules))}
        bad = {k: v for k, v in pairs.items() if v[0] != v[1]}
        if bad:
            raise ConfigError(f"base lora fit does not match the ensemble's LoRA settings "
                              f"(base vs ensemble): {bad}")

    def _train_member(self, i: int, data) -> dict:
        name, seed = self.adapter_names[i], self.seed + SEED_STRIDE * i
        self.model.set_adapter(name)  # the only adapter in the forward, and the only trainable one
        params = [p for n, p in self.model.named_parameters() if "lora_" in n and f".{name}." in n]
        with seeded_global_rng(seed, self.backbone.device):  # lora_dropout masks, if dropout > 0
            stats = train_classifier(self.model, params, self, data.train, self.config, seed,
                                     desc=f"{self.name}[{i}]")
        return {"member": i, "seed": seed, "source": "trained", **stats}

    def fit(self, data):
        t0 = time.perf_counter()
        if data.base is not None:  # member 0 = the base lora fit
            self._check_base(data.base)
            self.model = data.base.model
            members = [{"member": 0, "seed": self.seed, "source": "base lora fit",
                        "load_seconds": time.perf_counter() - t0}]
        else:
            self._wrap()  # adapter "default" initialised exactly as `lora` does
            members = [self._train_member(0, data)]
        for i in range(1, self.config.members):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed + SEED_STRIDE * i)  # LoRA's A init draws from the global RNG
                self.model.add_adapter(self.adapter_names[i], self.config.peft_config())
            members.append(self._train_member(i, data))
        self.model.set_adapter("default")
        self.model.eval()
        self.fitted = {"members": members, "seed_stride": SEED_STRIDE,
                       "base": "lora fit" if data.base is not None else None,
                       "timings": {"fit_seconds": time.perf_counter() - t0,
                                   "train_seconds": sum(m.get("train_seconds", 0.0) for m in members)}}
        return self.fitted

    def predict_logprobs(self, batch, n_samples, generator):
        out = []
        try:
            for name in self.adapter_names:  # S = M passes, one per member
                self.model.set_adapter(name, inference_mode=True)
                with self.backbone.autocast():
                    out.append(self.scorer.class_logits(self.model, batch).log_softmax(-1))
        finally:
            self.model.set_adapter("default", inference_mode=True)
        return torch.stack(out, dim=1)

    # ---- persistence: peft writes "default" at the root (a plain lora adapter) and the others in subfolders
    def save(self, path: Path) -> None:
        path = Path(path)
        self.model.save_pretrained(str(path))
        (path / "ensemble.json").write_text(json.dumps({"fitted": self.fitted}, indent=2))

    def load(self, path: Path) -> None:
        path = Path(path)
        self.model = load_adapter(self.backbone, path)
        for name in self.adapter_names[1:]:
            self.model.load_adapter(str(path / name), adapter_name=name, is_trainable=False)
        self.model.set_adapter("default", inference_mode=True)
        self.model.eval()
        self.fitted = json.loads((path / "ensemble.json").read_text())["fitted"]
