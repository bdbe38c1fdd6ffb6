"""The one interface every method implements.

A method says what it trains (`fit`), what is random and how S samples are drawn (`predict_logprobs`), and
how to persist what it fitted (`save`/`load`). It never formats prompts (the scorer does) and never
computes metrics (runners.evaluate does, from the [B, S, K] log-probabilities it returns).

Two shapes cover the suite:
- trained methods fit on `FitData.train` (may use `validation`);
- post-hoc methods (`posthoc = True`) start from a trained adapter directory (`FitData.adapter_dir`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from backbones import Backbone, EncodedBatch, Scorer
from tasks.types import MCExample


class ConfigError(ValueError):
    """An impossible or unknown setting; the message says what is wrong and how to fix it."""


@dataclass
class MethodConfig:
    """Base of every method's settings. Subclasses add typed fields with defaults and extend `validate`.

    `search_space` declares what `benchmark.py tune` may vary, next to the settings themselves:
    {name: ("float", low, high, log) | ("int", low, high) | ("categorical", [choices])}.
    """

    search_space: ClassVar[dict] = {}

    def validate(self) -> None:  # pragma: no cover - overridden
        pass

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class FitData:
    train: list[MCExample]
    validation: list[MCExample]
    workdir: Path                  # where the method may write what it fits (saved with the run)
    adapter_dir: Path | None = None  # post-hoc methods: the trained adapter they start from


class Method:
    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]]
    posthoc: ClassVar[bool] = False     # starts from a trained adapter instead of training one
    stochastic: ClassVar[bool] = False  # S samples differ
    default_samples: ClassVar[int] = 1
    base_method: ClassVar[str] = "lora"              # post-hoc: the trained method whose adapter it starts from
    adapter_file: ClassVar[str] = "adapter_config.json"  # the file that marks such an adapter directory
    has_point_estimate: ClassVar[bool] = False  # predict_point_logprobs: the MAP / mean its samples spread around

    def __init__(self, config: MethodConfig, backbone: Backbone, scorer: Scorer, seed: int):
        self.config, self.backbone, self.scorer, self.seed = config, backbone, scorer, seed
        self.fitted: dict = {}  # what fit() learnt that a reader should see (recorded in result.json)

    def fit(self, data: FitData) -> dict:
        raise NotImplementedError

    def predict_logprobs(self, batch: EncodedBatch, n_samples: int, generator: torch.Generator) -> torch.Tensor:
        """[B, S, K] class log-probabilities (log-softmax over K; -inf for absent choices)."""
        raise NotImplementedError

    def predict_point_logprobs(self, batch: EncodedBatch) -> torch.Tensor:
        """[B, K] class log-probabilities of the method's point estimate: the MAP (post-hoc methods, MC
        dropout without dropout) or the posterior mean (variational methods). The reference against which
        the evaluation measures whether the posterior changes anything (metrics.diagnostics); only methods
        with `has_point_estimate` implement it."""
        raise NotImplementedError(f"{self.name} declares no point estimate")

    def save(self, path: Path) -> None:
        raise NotImplementedError

    def load(self, path: Path) -> None:
        raise NotImplementedError

    def trainable_parameters(self) -> int:
        return 0
