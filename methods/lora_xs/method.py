"""`lora_xs`: LoRA-XS (Balazy et al., 2024) — Delta W = s * B R A with A, B fixed projections of W0 and only
the r x r core R trained (r^2 parameters per module instead of r (d_in + d_out)); the MAP adapter that
`l_lora_xs` puts a Laplace posterior on.

`projection` picks the family that fixes A and B (svd, wsvd, dct, random, or hybrids like dct-1/2+svd; see
methods/lora_xs/projections.py). `unfreeze_ab` trains A and B as well (L-LoRA-S in the seed paper).
R starts at N(0, init_std^2): near zero, so training starts from the pretrained model, but not exactly zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from methods.base import ConfigError, FitData
from methods.lora import LoRA
from methods.lora_xs import module as xs
from methods.lora_xs.projections import parse_projection, projection, split_rank
from methods.shared.training import TrainConfig, train_classifier


@dataclass
class LoRAXSConfig(TrainConfig):
    r: int = 8
    alpha: float = 16.0                # scale s = alpha / r, as in LoRA
    projection: str = "svd"            # svd | wsvd | dct | random | hybrid such as dct-1/2+svd
    unfreeze_ab: bool = False          # also train A and B (L-LoRA-S)
    init_std: float = 1e-5             # R ~ N(0, init_std^2)
    wsvd_batches: int = 4              # wsvd: training batches (of batch_size) for the input covariance
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    search_space: ClassVar[dict] = {**TrainConfig.search_space, "r": ("categorical", [4, 8, 16, 32]),
                                    "lr": ("float", 1e-4, 1e-2, True)}

    def validate(self) -> None:
        super().validate()
        if self.r <= 0:
            raise ConfigError(f"r={self.r} must be >= 1 (the LoRA-XS rank, e.g. 8)")
        if self.init_std < 0:
            raise ConfigError(f"init_std={self.init_std} must be >= 0")
        if self.wsvd_batches < 1:
            raise ConfigError(f"wsvd_batches={self.wsvd_batches} must be >= 1")
        if not self.target_modules:
            raise ConfigError("target_modules is empty; name the modules to adapt, e.g. q_proj,v_proj")
        split_rank(parse_projection(self.projection), self.r)  # unknown family, bad fractions -> ConfigError


class LoRAXS(LoRA):
    """LoRA-XS: train only an r x r core between frozen projections of the pretrained weight."""
    # a LoRA subclass for its deterministic predict_logprobs; fit, save, load and counts are its own

    name = "lora_xs"
    Config = LoRAXSConfig

    def _inject(self, train) -> dict:
        cfg, model = self.config, self.backbone.model
        targets = xs.target_linears(model, cfg.target_modules)
        too_big = [f"{n} ({m.out_features}x{m.in_features})" for n, m in targets
                   if cfg.r > min(m.in_features, m.out_features)]
        if too_big:
            raise ConfigError(f"r={cfg.r} exceeds min(d_in, d_out) of {too_big[0]}"
                              f"{f' and {len(too_big) - 1} more' if len(too_big) > 1 else ''}; "
                              f"choose r <= {min(min(m.in_features, m.out_features) for _, m in targets)}")
        split = split_rank(parse_projection(cfg.projection), cfg.r)
        covs = {}
        if any(f == "wsvd" for f, _ in split):
            covs = xs.input_covariances(model, self.scorer, self.backbone, targets, train, cfg.batch_size,
                                        cfg.wsvd_batches)
        gen = torch.Generator().manual_seed(self.seed)
        init = torch.Generator().manual_seed(self.seed + 1)
        for i, (name, base) in enumerate(targets):
            A, B = projection(base.weight, split, cov=covs.get(name), gen=gen)
            m = xs.XSLinear(base, A.float(), B.float(), cfg.alpha / cfg.r)
            with torch.no_grad():
                m.xs_R.weight.copy_(torch.randn(cfg.r, cfg.r, generator=init) * cfg.init_std)
            m.xs_A.weight.requires_grad_(cfg.unfreeze_ab)
            m.xs_B.weight.requires_grad_(cfg.unfreeze_ab)
            xs.replace(model, name, m)
        self.model = model
        return {"rank_split": dict(split), "n_modules": len(targets)}

    def fit(self, data: FitData) -> dict:
        info = self._inject(data.train)
        params = [p for n, p in self.model.named_parameters() if p.requires_grad and ".xs_" in n]
        stats = train_classifier(self.model, params, self, data.train, self.config, self.seed, desc=self.name)
        self.fitted = {"regime": "MAP" if self.config.weight_decay > 0 else "MLE", **info, **stats}
        cfg = self.config
        self.meta = {"r": cfg.r, "projection": cfg.projection, "unfreeze_ab": cfg.unfreeze_ab,
                     "target_modules": list(cfg.target_modules)}  # how A and B were made (saved with them)
        return self.fitted

    def save(self, path: Path) -> None:
        xs.save(self.model, path, self.meta)
        self.save_fitted(path)

    def load(self, path: Path) -> None:
        self.model = xs.load(self.backbone, path)
        self.meta = xs.read_meta(path)
        self.load_fitted(path)

    @classmethod
    def check_saved(cls, path: Path) -> None:
        if not (Path(path) / xs.MARKER).is_file():
            raise ConfigError(f"{path} is not a lora_xs adapter (no {xs.MARKER}); point --adapter at the "
                              "artifacts of a lora_xs fit (<results>/fits/<fit id>/artifacts)")

    def trainable_parameters(self) -> int:
        parts = ("R", "A", "B") if self.config.unfreeze_ab else ("R",)
        return sum(getattr(m, f"xs_{p}").weight.numel() for _, m in xs.xs_modules(self.model) for p in parts)
