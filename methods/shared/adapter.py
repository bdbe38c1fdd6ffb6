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
    return json.loads(f.read_text())


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
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"adapter at {adapter_dir} does not fit this backbone ({first[:200]}); "
                          "it was trained on another model") from e
    model.eval()
    return model


def lora_layers(model):
    """(name, peft LoRA Linear) for every adapted module, in a fixed order."""
    from peft.tuners.lora import Linear as LoraLinear
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLinear)]
