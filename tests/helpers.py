"""Small shared builders for tests: the tiny backbone, data slices, and methods fitted on them."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from backbones import BackboneConfig, Scorer, load_backbone
from methods.base import FitData
from methods.registry import get_method, load_fit
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


def build(method_name: str, data_dir: str, workdir: Path, base_dir: Path | None = None, seed: int = 0,
          mode: str = "loglik", extra: dict | None = None):
    """A fitted method on the tiny model and 12 ARC-Easy training examples; `base_dir`: a saved fit of the
    method's `base_method`, loaded onto the same backbone and handed over as FitData.base."""
    bb, scorer = tiny(mode)
    cls = get_method(method_name)
    method = cls(make_config(cls.Config, fast_settings(method_name, extra)), bb, scorer, seed)
    train = load_split("arc_easy", "train", data_dir=data_dir, limit=12)
    val = load_split("arc_easy", "validation", data_dir=data_dir, limit=12)
    base = load_fit(cls.base_method, base_dir, bb, scorer, seed) if base_dir is not None else None
    method.fit(FitData(train=train, validation=val, workdir=workdir, base=base))
    return method


ROOT = Path(__file__).resolve().parents[1]


def cli(*args, results: Path, data_dir: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python benchmark.py ARGS --results RESULTS` with the dataset mirror at `data_dir`."""
    env = {**os.environ, "BAYESPEFT_DATA_DIR": data_dir}
    return subprocess.run([sys.executable, str(ROOT / "benchmark.py"), *args, "--results", str(results)],
                          capture_output=True, text=True, env=env, timeout=timeout)


def assert_bad_input(p: subprocess.CompletedProcess, needle: str, results: Path) -> None:
    """The bad-input promise: exit 2, exactly one `error:` line naming the problem, nothing written."""
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and needle.lower() in lines[0].lower(), p.stderr
    assert not Path(results).exists() or not any(Path(results).iterdir()), list(Path(results).iterdir())
