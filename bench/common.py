"""What every comparison shares: the settings, a context that loads models and data, timing, FLOP counts,
targets and tables.

Each comparison module exposes `run(ctx) -> dict` returning a `Report`-shaped dict (see `report`), so the
CLI can print it and write it to JSON without knowing what was measured.
"""
from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

from backbones import Backbone, BackboneConfig, Scorer, load_backbone
from bench.settings import BenchSettings
from methods.base import FitData
from methods.registry import get_method
from methods.settings import make_config
from tasks import load_split
from tasks.types import MCExample


def report(name: str, what: str) -> dict:
    """An empty report: `tables` (title, header, rows), `figures` (flat numbers), `targets`, `notes`."""
    return {"name": name, "what": what, "tables": [], "figures": {}, "targets": [], "notes": []}


def add_target(rep: dict, label: str, value: float, threshold: float, higher_is_better: bool, unit: str = "") -> None:
    met = value >= threshold if higher_is_better else value <= threshold
    rep["targets"].append({"target": label, "value": value, "threshold": threshold,
                           "rule": (">=" if higher_is_better else "<=") + f" {threshold:g}{unit}", "met": bool(met)})


class Timer:
    """`with Timer() as t: ...` then `t.seconds`; perf_counter wall time (the machine may be shared)."""

    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0


def batched(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def nonembedding_params(model: torch.nn.Module) -> int:
    """Parameters outside the token embedding and the output head (tied or not): the N of 2N FLOPs/token."""
    skip = set()
    for mod in (model.get_input_embeddings(), model.get_output_embeddings()):
        if mod is not None:
            skip |= {id(p) for p in mod.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


FLOP_RULE = ("model FLOPs = 2 * N * tokens per forward, 6 * N * tokens per training step (forward + backward), "
             "N = non-embedding parameters of the base model, tokens = tokens of the plain per-choice layout "
             "(prompt repeated for every choice), so packed layouts are credited with the work they avoid; "
             "6x is the usual convention even though frozen base weights need no weight gradients")


WORK_RULE = ("work done (issue 13) = per real, non-padding token: 4N for a training step through a frozen base "
             "(2N forward, 2N backward for activation gradients; a frozen base needs no weight gradients) + 6 x "
             "LoRA parameters + attention 12 x layers x d_model x L (QK^T and AV, 4 d L forward, twice that "
             "backward, over the padded row length L a dense kernel computes); + the output head 4 x V x d per "
             "position whose logits are computed; padding tokens are overhead, not work")


def train_work_flops(model, n_params: int, n_lora: int, batches) -> dict:
    """FLOPs of the work a training loop does on `batches` [(rows, L, real tokens, head positions)] by
    WORK_RULE, with the padding overhead beside it."""
    c = model.config
    d, layers, V = c.hidden_size, c.num_hidden_layers, c.vocab_size
    flops = sum(real * (4 * n_params + 6 * n_lora + 12 * layers * d * L) + 4 * V * d * head
                for _, L, real, head in batches)
    slots = sum(rows * L for rows, L, _, _ in batches)
    real = sum(r for _, _, r, _ in batches)
    return {"flops": flops, "real_tokens": real, "padded_slots": slots, "padding_fraction": 1 - real / slots}


def matmul_rate(m: int, k: int, n: int, repeats: int, dtype=torch.bfloat16) -> float:
    """Best-of-`repeats` GFLOP/s of one (m x k) @ (k x n) matmul in `dtype`."""
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        with Timer() as t:
            a @ b
        best = min(best, t.seconds)
    return 2 * m * k * n / best / 1e9


def gflops(n_params: int, tokens: int, seconds: float, factor: int) -> float:
    return factor * n_params * tokens / seconds / 1e9


def frac_of_peak(value: float, peak: float | None) -> str:
    return f"{value / peak:.1%}" if peak else "-"


def matmul_peak(size: int, repeats: int, dtype=torch.bfloat16) -> dict:
    """Best-of-`repeats` GFLOP/s of one size x size matmul in `dtype` (the ceiling for bf16 autocast work)."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b  # warm-up: thread pool and kernel selection
    best = float("inf")
    for _ in range(repeats):
        with Timer() as t:
            a @ b
        best = min(best, t.seconds)
    return {"size": size, "dtype": str(dtype).replace("torch.", ""), "best_seconds": best,
            "gflops": 2 * size ** 3 / best / 1e9, "threads": torch.get_num_threads()}


class Context:
    """Settings plus lazily built shared things: data splits, fresh backbones, the shared lora adapter.

    Backbones are loaded fresh for every model that gets LoRA layers: peft injects them into the base model
    in place, so two methods must never share one.
    """

    def __init__(self, settings: BenchSettings, workdir: Path | None = None):
        self.s = settings
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="bench-")
        self.workdir = Path(workdir or self._tmp.name)
        self._splits: dict[str, list[MCExample]] = {}
        self._adapter: tuple[Path, dict] | None = None
        self._peak: dict | None = None

    def peak(self) -> dict:
        """The machine's bf16 matmul peak, measured once per bench."""
        if self._peak is None:
            self._peak = matmul_peak(self.s.peak_size, self.s.peak_repeats)
        return self._peak

    # ---- models -------------------------------------------------------------------------------------
    def backbone(self) -> Backbone:
        # CPU only: the plain loops build their index tensors on the CPU, and the bench is about 2-core CPUs
        return load_backbone(BackboneConfig(self.s.model, precision=self.s.precision, device="cpu"), seed=self.s.seed)

    def autocast(self, bb: Backbone, precision: str | None = None):
        """The backbone's autocast, or none for fp32 (to compare both precisions on one model)."""
        return nullcontext() if (precision or self.s.precision) == "fp32" else bb.autocast()

    def method(self, name: str, bb: Backbone, settings: dict | None = None):
        """A registered method on `bb` with loglik scoring; the bench's batch size and lr where it has them."""
        cls = get_method(name)
        fields = cls.Config.__dataclass_fields__
        base = {k: v for k, v in {"batch_size": self.s.batch_size, "lr": self.s.lr}.items() if k in fields}
        return cls(make_config(cls.Config, {**base, **(settings or {})}), bb, Scorer(bb.tokenizer, "loglik"), self.s.seed)

    # ---- data ---------------------------------------------------------------------------------------
    def split(self, split: str) -> list[MCExample]:
        if split not in self._splits:
            self._splits[split] = load_split(self.s.task, split, data_dir=self.s.data_dir)
        return self._splits[split]

    def examples(self, split: str, n: int, same_k: bool = False) -> list[MCExample]:
        """The first n examples of `split`; with same_k only those with the split's most common choice count
        (laplace-torch's curvature cannot take the -inf logits of absent choices)."""
        pool = self.split(split)
        if same_k:
            ks = [e.n_choices for e in pool]
            k = max(set(ks), key=ks.count)
            pool = [e for e in pool if e.n_choices == k]
        if len(pool) < n:
            raise ValueError(f"{self.s.task} {split} has only {len(pool)} usable examples, {n} asked for")
        return pool[:n]

    def fit_examples(self) -> list[MCExample]:
        """Training questions of the shared adapter, also the Laplace fit data and the TFB anchor pool."""
        return self.examples("train", self.s.adapter_examples, same_k=True)

    # ---- the shared adapter -------------------------------------------------------------------------
    def adapter(self) -> tuple[Path, dict]:
        """(adapter dir, training stats) of a `lora` run on `fit_examples`, trained once per bench."""
        if self._adapter is None:
            lora = self.method("lora", self.backbone(), {"epochs": self.s.adapter_epochs})
            with Timer() as t:
                stats = lora.fit(FitData(train=self.fit_examples(), validation=[], workdir=self.workdir))
            path = self.workdir / "adapter"
            lora.save(path)
            self._adapter = (path, {**stats, "fit_seconds": t.seconds, "examples": len(self.fit_examples()),
                                    "epochs": self.s.adapter_epochs})
        return self._adapter

    def encode_all(self, scorer: Scorer, examples: list[MCExample]) -> list:
        return [scorer.encode(b) for b in batched(examples, self.s.batch_size)]


def loadavg() -> list[float]:
    """1/5/15-minute load averages: a shared machine makes every absolute time noisier."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def timed_loop(fn: Callable[[object], object], items: list, warmup: bool = True) -> tuple[list, float]:
    """(outputs, seconds) of fn over items; one untimed call on the first item first (kernel/allocator warm-up)."""
    if warmup and items:
        fn(items[0])
    out = []
    with Timer() as t:
        for it in items:
            out.append(fn(it))
    return out, t.seconds
