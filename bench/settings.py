"""The settings of `benchmark.py bench`, kept free of heavy imports so building the CLI parser stays fast."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

RESULTS = str(Path(__file__).resolve().parents[1] / "results")


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class BenchSettings:
    """Every knob of `benchmark.py bench`; each field is a `--flag` (underscores become dashes)."""

    model: str = _opt("smollm2-135m", "preset, hub id or local directory")
    task: str = _opt("arc_easy", "task the examples come from")
    data_dir: str | None = _opt(None, "dataset mirror (else $BAYESPEFT_DATA_DIR, else the hub)")
    precision: str = _opt("bf16", "bf16 (autocast) | fp32; both sides of every comparison use it")
    seed: int = _opt(0, "seed of LoRA init, data order and samples")
    batch_size: int = _opt(8, "questions per batch, everywhere")
    lr: float = _opt(5e-4, "learning rate of the lora adapter and of the train comparison")
    # train
    train_steps: int = _opt(6, "train: timed optimiser steps per loop (one warm-up step is extra)")
    # score
    score_examples: int = _opt(24, "score: test questions timed per scorer")
    score_check_examples: int = _opt(4, "score: questions for the fp32 agreement check")
    # shared adapter (laplace, tfb, samples)
    adapter_examples: int = _opt(100, "training questions of the shared lora adapter (and the Laplace fit data)")
    adapter_epochs: int = _opt(8, "epochs of the shared lora adapter (timed: the Laplace target's reference)")
    ref_epochs: int = _opt(8, "epochs of a real lora run (quick preset) the Laplace fit is compared with")
    # laplace
    laplace_pred_examples: int = _opt(8, "laplace: test questions for the predictive")
    laplace_prior: float = _opt(5.0, "laplace: fixed prior precision for both (about the quick run's marglik value)")
    laplace_kfac: str = _opt("reduce", "laplace: Kronecker approximation over tokens for both: reduce | expand")
    laplace_full_max: int = _opt(1024, "laplace: ours keeps factor sides up to this size full (laplace-torch always does)")
    # tfb
    tfb_anchor: int = _opt(100, "tfb: anchor questions (the quick preset's)")
    tfb_samples: int = _opt(5, "tfb: weight samples per degradation estimate")
    tfb_iterations: int = _opt(6, "tfb: bisection steps (the quick preset's)")
    tfb_sigma_min: float = _opt(1e-4, "tfb: lower sigma bound")
    tfb_sigma_max: float = _opt(0.1, "tfb: upper sigma bound")
    # samples
    samples: int = _opt(10, "samples: S, posterior samples per question")
    samples_examples: int = _opt(16, "samples: test questions")
    samples_method: str = _opt("tfb", "samples: tfb | mc_dropout")
    # quick
    results: str = _opt(RESULTS, "quick: results directory holding the quick sweep")
    quick_spec: str = _opt("quick", "quick: sweep preset or file whose cells make the leaderboard")
    run_quick: bool = _opt(False, "quick: run `benchmark.py sweep <quick-spec>` first (long)")
    # machine
    peak_size: int = _opt(2048, "matmul size for the bf16 peak")
    peak_repeats: int = _opt(5, "matmul peak: best of this many")
