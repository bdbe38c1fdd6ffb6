"""Small shared builders for tests: the tiny backbone, data slices, and methods fitted on them."""
from __future__ import annotations

from pathlib import Path

from backbones import BackboneConfig, Scorer, load_backbone
from methods.base import FitData
from methods.registry import get_method
from methods.settings import make_config
from tasks import load_split

# Settings that keep every method fast on the tiny model (applied where the method has the field).
FAST = {"epochs": 1, "batch_size": 4}


def tiny(mode: str = "loglik", precision: str = "fp32"):
    bb = load_backbone(BackboneConfig("tiny-random-llama", precision=precision, device="cpu"))
    return bb, Scorer(bb.tokenizer, mode)


def fast_settings(method_name: str, extra: dict | None = None) -> dict:
    fields = get_method(method_name).Config.__dataclass_fields__
    return {k: v for k, v in {**FAST, **(extra or {})}.items() if k in fields}


def build(method_name: str, data_dir: str, workdir: Path, adapter_dir: Path | None = None, seed: int = 0,
          mode: str = "loglik", extra: dict | None = None):
    """A fitted method on the tiny model and 12 ARC-Easy training examples."""
    bb, scorer = tiny(mode)
    cls = get_method(method_name)
    method = cls(make_config(cls.Config, fast_settings(method_name, extra)), bb, scorer, seed)
    train = load_split("arc_easy", "train", data_dir=data_dir, limit=12)
    val = load_split("arc_easy", "validation", data_dir=data_dir, limit=12)
    method.fit(FitData(train=train, validation=val, workdir=workdir, adapter_dir=adapter_dir))
    return method
