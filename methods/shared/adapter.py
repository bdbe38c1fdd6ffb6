"""Loading a trained PEFT LoRA adapter onto a backbone, for post-hoc methods.

Post-hoc methods never train their own adapter: they start from the `lora` run of the same task, seed and
LoRA settings (the runner finds or trains it), or from any PEFT adapter directory a user points at.
"""
from __future__ import annotations

import json
from pathlib import Path

from methods.base import ConfigError


def read_adapter_config(adapter_dir: Path) -> dict:
    f = Path(adapter_dir) / "adapter_config.json"
    if not f.is_file():
        raise ConfigError(f"{adapter_dir} is not a PEFT adapter directory (no adapter_config.json); "
                          "pass --adapter <dir> of a trained adapter, or leave it out to reuse the lora run")
    try:
        cfg = json.loads(f.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{f} is not valid JSON ({type(e).__name__}); the adapter is damaged: retrain it") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{f} holds a JSON {type(cfg).__name__}, not an adapter config; retrain the adapter")
    return cfg


def load_adapter(backbone, adapter_dir: Path, is_trainable: bool = False):
    """A PeftModel over `backbone.model` with the adapter's weights; fails clearly on a mismatch."""
    from peft import PeftModel

    cfg = read_adapter_config(adapter_dir)
    if cfg.get("peft_type") not in (None, "LORA"):
        raise ConfigError(f"adapter at {adapter_dir} is {cfg.get('peft_type')}, not a LoRA adapter")
    names = {n.rsplit(".", 1)[-1] for n, _ in backbone.model.named_modules()}
    targets = cfg.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    missing = [t for t in targets if t not in names]
    if missing:
        raise ConfigError(f"adapter at {adapter_dir} targets modules {missing} that this backbone does not have; "
                          "it was trained on another model")
    try:
        model = PeftModel.from_pretrained(backbone.model, str(adapter_dir), is_trainable=is_trainable)
    except (RuntimeError, ValueError) as e:  # size mismatch: same module names, other widths
        raise ConfigError(f"adapter at {adapter_dir} does not fit this backbone ({_detail(e)}); "
                          "it was trained on another model") from e
    except Exception as e:  # a truncated or random-bytes weights file: safetensors' own error types
        raise ConfigError(f"adapter weights at {adapter_dir} cannot be read ({type(e).__name__}: {_detail(e)}); "
                          "the adapter is damaged: retrain it") from e
    model.eval()
    return model


def _detail(e: Exception) -> str:
    """The informative line of a loader's error (torch puts the shapes on a line after its heading)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    pick = next((ln for ln in lines if "size mismatch" in ln or "shape" in ln), lines[0] if lines else "")
    return pick[:240] or type(e).__name__


def check_rank(model, target_modules, r: int) -> None:
    """A LoRA rank above min(d_in, d_out) of a target adds nothing and, absurdly large, exhausts memory:
    refuse it before peft allocates anything."""
    from torch import nn
    dims = [(n, min(m.in_features, m.out_features)) for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in set(target_modules)]
    if dims and r > min(d for _, d in dims):
        name, d = min(dims, key=lambda x: x[1])
        raise ConfigError(f"r={r} exceeds min(d_in, d_out) = {d} of {name}; choose r <= {d}")


def lora_layers(model):
    """(name, peft LoRA Linear) for every adapted module, in a fixed order."""
    from peft.tuners.lora import Linear as LoraLinear
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLinear)]
