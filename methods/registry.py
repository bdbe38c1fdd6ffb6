"""Lazy method registry: names map to "module:Class" strings, so heavy imports happen only when used.

Adding a method = one module under methods/ plus one line here; the shared contract tests then cover it.
"""
from __future__ import annotations

import difflib
import importlib

from methods.base import ConfigError, Method

REGISTRY: dict[str, str] = {
    "laplace_lora": "methods.laplace_lora:LaplaceLoRA",
    "lora": "methods.lora:LoRA",
    "lora_xs": "methods.lora_xs:LoRAXS",
    "l_lora_xs": "methods.l_lora_xs:LLoRAXS",
    "zero_shot": "methods.zero_shot:ZeroShot",
    "temperature": "methods.temperature:Temperature",
    "tfb": "methods.tfb:TFB",
    "blob": "methods.blob:BLoB",
    "mc_dropout": "methods.mc_dropout:MCDropout",
    "ensemble": "methods.ensemble:Ensemble",
    "bayesian_lora": "methods.bayesian_lora:BayesianLoRA",
}


def load_fit(name: str, path, backbone, scorer, seed: int = 0, settings: dict | None = None) -> Method:
    """A fit of method `name` saved at `path` (by `Method.save`), loaded onto `backbone`."""
    from pathlib import Path
    from methods.settings import make_config
    cls = get_method(name)
    method = cls(make_config(cls.Config, settings or {}), backbone, scorer, seed)
    method.load(Path(path))
    return method


def method_names() -> list[str]:
    return sorted(REGISTRY)


def get_method(name: str) -> type[Method]:
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown method {name!r}.{hint} Known: {', '.join(method_names())} "
                          f"(`python benchmark.py list methods`).")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def list_methods() -> list[tuple[str, str]]:
    out = []
    for name in method_names():
        cls = get_method(name)
        out.append((name, (cls.__doc__ or "").strip().splitlines()[0]))
    return out
