"""`l_lora_xs`: post-hoc Laplace over the r x r cores of a trained `lora_xs` adapter (A, B and the base
frozen) — the Laplace machinery of `laplace_lora` (curvature, prior selection, GLM/NN predictives, settings)
applied to the cores R instead of the LoRA factors.

Each core has r^2 weights, so with `kron` both Kronecker sides are r x r and kept in full (no low-rank
truncation; `n_kfac` / `kfac_full_max` only matter for r > kfac_full_max) and `diag` is cheap too. The
posterior has r^2 parameters per module, against r (d_in + d_out) for Laplace-LoRA.
"""
from __future__ import annotations

from pathlib import Path

from methods.base import ConfigError
from methods.laplace_lora.hooks import in_subset
from methods.laplace_lora import LaplaceLoRA, LaplaceLoRAConfig
from methods.lora_xs import module as xs


class LLoRAXS(LaplaceLoRA):
    """L-LoRA-XS: Laplace posterior over the r x r LoRA-XS cores (kron or diag), linearised predictive."""

    name = "l_lora_xs"
    Config = LaplaceLoRAConfig
    base_method = "lora_xs"

    def _take_base(self, base) -> None:
        self.model, self._adapter_meta = base.model, base.meta  # how A and B were made: saved with the copy

    def _load_model(self, adapter_dir: Path):
        model = xs.load(self.backbone, adapter_dir)
        self._adapter_meta = xs.read_meta(adapter_dir)
        return model

    def _posterior_layers(self):
        mods = xs.xs_modules(self.model)
        if not mods:
            raise ConfigError("the model has no LoRA-XS layers; l_lora_xs needs a trained lora_xs adapter")
        return [(f"{n}.xs_R", m.xs_R) for n, m in in_subset(mods, self.config.subset)]

    def _save_model(self, path: Path) -> None:
        xs.save(self.model, path, self._adapter_meta)
