"""The one interface every method implements.

A method says what it trains (`fit`), what is random and how S samples are drawn (`predict_logprobs`), and
how to persist what it fitted (`save`/`load`). It never formats prompts (the scorer does) and never
computes metrics (runners.evaluate does, from the [B, S, K] log-probabilities it returns).

Two shapes cover the suite:
- trained methods fit on `FitData.train` (may use `validation`);
- post-hoc methods (`posthoc = True`) start from a fitted method of kind `base_method` (`FitData.base`,
  handed over loaded); the ensemble also starts from one (its member 0).

What the runner needs to know of a method is declared here, never discovered: `base_method` and
`base_settings` (which fit it starts from), `samples_for` (how many samples an evaluation draws),
`check_saved` (whether a directory holds a saved fit of this method), `has_point_estimate`.
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
    base: "Method | None" = None   # post-hoc methods, ensembles: the fitted `base_method` they start from


class Method:
    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]]
    posthoc: ClassVar[bool] = False          # fits nothing of its own weights: starts from a fitted base
    base_method: ClassVar[str | None] = None  # the method whose fit it starts from (None: starts from scratch)
    default_samples: ClassVar[int] = 1       # posterior samples per evaluation unless asked; 1 = deterministic
    has_point_estimate: ClassVar[bool] = False  # predict_point_logprobs: the MAP / mean its samples spread around

    def __init__(self, config: MethodConfig, backbone: Backbone, scorer: Scorer, seed: int):
        self.config, self.backbone, self.scorer, self.seed = config, backbone, scorer, seed
        self.fitted: dict = {}  # what fit() learnt that a reader should see (recorded in result.json)

    @classmethod
    def samples_for(cls, config: MethodConfig, requested: int | None = None) -> int:
        """The S an evaluation draws when `requested` (None: the default) is asked for; 1 = deterministic."""
        return 1 if cls.default_samples == 1 else (requested or cls.default_samples)

    @classmethod
    def base_settings(cls, config: MethodConfig, given: dict) -> dict:
        """Settings of the `base_method` fit this one starts from: the user's (`--base-set`) by default."""
        return given

    @classmethod
    def check_saved(cls, path: Path) -> None:
        """Raise ConfigError unless `path` holds a fit saved by this method (cheap: no model is loaded)."""
        raise ConfigError(f"{cls.name} fits cannot be loaded from a directory")

    @property
    def stochastic(self) -> bool:
        return type(self).samples_for(self.config) > 1

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

    # ---- the fitted record beside a saved fit (methods whose own files have no place for it) ----------
    FITTED_FILE: ClassVar[str] = "fitted.json"

    def save_fitted(self, path: Path) -> None:
        import json
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / self.FITTED_FILE).write_text(json.dumps(self.fitted, indent=1, default=str))

    def load_fitted(self, path: Path) -> None:
        """The record of a fit saved by this suite; {} for an adapter from elsewhere (nothing recorded)."""
        import json
        f = Path(path) / self.FITTED_FILE
        self.fitted = json.loads(f.read_text()) if f.is_file() else {}
