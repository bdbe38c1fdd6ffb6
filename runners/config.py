"""RunConfig: everything a user varies for one benchmark cell, serialised with its result.

The run id is a readable prefix plus a hash of the full config (method settings with defaults filled in),
so an identical run is found and skipped, and any changed setting is a new run. Where data or results
live, and which device runs it, are not part of the identity.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from backbones import NORMALIZATIONS, SCORING_MODES, BackboneConfig
from methods.base import ConfigError
from methods.registry import get_method
from methods.settings import make_config


@dataclass
class RunConfig:
    method: str
    task: str
    model: str = "smollm2-135m"
    seed: int = 0
    ood: tuple[str, ...] = ()
    scoring: str = "loglik"
    normalization: str = "token"
    limit_train: int | None = None
    limit_eval: int | None = None
    split_seed: int = 0
    val_fraction: float = 0.1
    precision: str = "bf16"
    quant: str = "none"
    eval_batch_size: int = 8
    n_samples: int | None = None       # posterior samples at test time; None = the method's default
    settings: dict = field(default_factory=dict)  # the method's full config (defaults filled in)
    eval_split: str = "test"           # "validation": score the held-out split instead (tuning; no OOD sets)
    adapter: str | None = None         # post-hoc methods: an existing PEFT adapter directory
    base_settings: dict = field(default_factory=dict)  # post-hoc methods: `lora` settings of the base adapter

    def backbone_config(self, device: str = "auto") -> BackboneConfig:
        return BackboneConfig(name=self.model, precision=self.precision, quant=self.quant, device=device)

    def method_config(self):
        return make_config(get_method(self.method).Config, self.settings)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["ood"] = list(self.ood)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        """The inverse of to_dict, for a config read back from JSON (fields it does not know are left out:
        records written by other versions)."""
        known = {f.name for f in dataclasses.fields(cls)}
        cfg = cls(**{k: v for k, v in d.items() if k in known})
        cfg.ood = tuple(cfg.ood)
        return cfg

    def fit_dict(self) -> dict:
        """The fields that make the fit: everything but where and how it is evaluated."""
        return {k: v for k, v in self.to_dict().items() if k not in EVAL_FIELDS}

    def _id(self, fields: dict) -> str:
        # Fields at their default value stay out of the hash, so adding a new field with a default keeps
        # existing ids (and their results) valid. Method settings enter in full (defaults filled in).
        defaults = RunConfig(method=self.method, task=self.task).to_dict()
        identity = {k: v for k, v in fields.items() if k in ("method", "task", "settings") or v != defaults[k]}
        blob = json.dumps(identity, sort_keys=True, default=list)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
        return f"{self.method}-{self.task.replace(':', '_').replace('/', '_')[:40]}-s{self.seed}-{digest}"

    @property
    def run_id(self) -> str:
        """The cell: its fit and the evaluations it asks for."""
        return self._id(self.to_dict())

    @property
    def fit_id(self) -> str:
        """The fit alone (runners/fits.py): the same for every run that scores it, however it is evaluated."""
        return self._id(self.fit_dict())


# Where and how a fit is scored: not part of what is fitted (runners/fits.py keys evaluations by them)
EVAL_FIELDS = ("ood", "limit_eval", "eval_batch_size", "n_samples", "eval_split")


def build_run_config(method: str, task: str, overrides: dict | None = None, **kw) -> RunConfig:
    """Validate every setting up front and fill the method's defaults, so nothing runs on bad input."""
    cls = get_method(method)  # unknown method -> ConfigError with a suggestion
    cfg = RunConfig(method=method, task=task, **kw)
    cfg.settings = make_config(cls.Config, overrides).to_dict()
    if cfg.scoring not in SCORING_MODES:
        raise ConfigError(f"scoring {cfg.scoring!r} is not one of {', '.join(SCORING_MODES)}")
    if cfg.normalization not in NORMALIZATIONS:
        raise ConfigError(f"normalization {cfg.normalization!r} is not one of {', '.join(NORMALIZATIONS)}")
    for name, flag, unset in (("limit_train", "--limit-train", "no limit"), ("limit_eval", "--limit-eval", "no limit"),
                              ("n_samples", "--samples", "the method's default")):
        v = getattr(cfg, name)
        if v is not None and v < 1:
            raise ConfigError(f"{flag} {v} must be >= 1 (or left out for {unset})")
    if cfg.seed < 0:
        raise ConfigError(f"--seed {cfg.seed} must be >= 0")
    if any(not t for t in cfg.ood):
        raise ConfigError(f"--ood {','.join(cfg.ood)!r} names an empty task; give comma-separated task names")
    if cfg.eval_batch_size < 1:
        raise ConfigError(f"eval-batch-size={cfg.eval_batch_size} must be >= 1")
    if not 0 < cfg.val_fraction < 1:
        raise ConfigError(f"val-fraction={cfg.val_fraction} must be in (0, 1)")
    if cfg.eval_split not in ("test", "validation"):
        raise ConfigError(f"eval_split={cfg.eval_split!r} must be test or validation")
    if cfg.eval_split == "validation" and cfg.ood:
        raise ConfigError("OOD sets are evaluated on their test split; leave them out when eval_split=validation")
    if task in cfg.ood:
        raise ConfigError(f"{task} is the training task; it cannot also be an OOD set")
    if cfg.adapter is not None and not cls.posthoc:
        raise ConfigError(f"--adapter is for post-hoc methods; {method} trains its own adapter")
    if cfg.base_settings and cls.base_method is None:
        raise ConfigError(f"--base-set is for methods that start from a fitted base; {method} trains its own")
    cfg.backbone_config().validate()
    base = base_run_config(cfg)  # validates the base adapter's settings up front
    if base is not None:
        cfg.base_settings = base.settings  # full, typed: the same base adapter hashes the same however given
    return cfg


# Only the base's fit matters (runners/fits.py); its evaluation fields are copied so that an old-layout base
# run (results written before fits/, its artifacts inside the run) is still found under its run id.
SHARED_WITH_BASE = ("model", "seed", "ood", "scoring", "normalization", "limit_train", "limit_eval",
                    "split_seed", "val_fraction", "precision", "quant", "eval_batch_size")


def base_run_config(cfg: RunConfig, cls=None, mcfg=None) -> RunConfig | None:
    """The run a method starts from (its declared `base_method`: `lora`, or `lora_xs` for l_lora_xs) with the
    same task, seed and data and the settings the method declares (`base_settings`: the user's --base-set
    for post-hoc methods, the ensemble's own LoRA settings). None when the method starts from scratch or
    the user gave a saved fit with --adapter.
    """
    cls = cls or get_method(cfg.method)
    if cfg.adapter is not None or cls.base_method is None:
        return None
    settings = cls.base_settings(mcfg or make_config(cls.Config, cfg.settings), dict(cfg.base_settings))
    return build_run_config(cls.base_method, cfg.task, settings, **{k: getattr(cfg, k) for k in SHARED_WITH_BASE})


@dataclass(frozen=True)
class RunPlan:
    """A run resolved once: the method class and its typed settings, the fit it starts from (itself a plan),
    the S its evaluations draw and the sets it scores. The runner passes this down instead of looking the
    method up again at every step."""
    cfg: RunConfig
    cls: type
    method_config: object
    base: "RunPlan | None"        # the fit this one starts from; None: from scratch, or a user's --adapter
    n_samples: int
    sets: tuple[tuple[str, str], ...]  # (evaluated set, split), the training task first

    @property
    def fit_id(self) -> str:
        return self.cfg.fit_id

    @property
    def run_id(self) -> str:
        return self.cfg.run_id


def plan_run(cfg: RunConfig) -> RunPlan:
    cls = get_method(cfg.method)
    mcfg = make_config(cls.Config, cfg.settings)
    base = None
    if cfg.adapter is None and cls.base_method is not None:
        base = plan_run(base_run_config(cfg, cls, mcfg))
    sets = ((cfg.task, cfg.eval_split), *((t, "test") for t in cfg.ood))
    return RunPlan(cfg, cls, mcfg, base, cls.samples_for(mcfg, cfg.n_samples), sets)
