"""Fits and evaluations, stored apart from the runs that use them.

A *fit* is what a method learnt: the method and its settings, the training task, seed and split settings,
the model (precision, quantisation), the scoring, and the fit it starts from (post-hoc methods, ensembles).
An *evaluation* is a fit scored on one set (split, limit, S). A run, one leaderboard cell, is a fit plus the
evaluations it asks for, and reuses both when they exist:

    <results>/fits/<fit id>/artifacts/           what Method.save wrote
    <results>/fits/<fit id>/fit.json             the fit's record: settings, what was fitted, timings, where
    <results>/fits/<fit id>/evals/<key>/         one evaluation: record.json and predictions.jsonl

So adding an OOD set to a finished run scores only that set; a post-hoc method needs its base's fit and
never its base's evaluations; a base is fitted once however its users are evaluated. Both kinds of entry
appear only by renaming a finished temp directory, so an entry that exists is complete.
Runs written before this layout (artifacts inside the run directory) still count as finished, and a base
fit is found in them; `benchmark.py migrate` moves their fits here so added evaluations can reuse them.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from runners.lock import claim
from runners.results import Phases, environment, prediction_arrays, read_result, write_json_atomic

FIT_FILE = "fit.json"


def fits_root(results: Path) -> Path:
    return Path(results) / "fits"


def fit_dir(results: Path, fit_id: str) -> Path:
    return fits_root(results) / fit_id


def read_fit(fdir: Path) -> dict | None:
    """The record of a complete fit at `fdir`, else None."""
    try:
        rec = json.loads((Path(fdir) / FIT_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return rec if isinstance(rec, dict) and (Path(fdir) / "artifacts").is_dir() else None


def legacy_fit(results: Path, run_id: str) -> Path | None:
    """A run directory of the old layout (artifacts inside it) holding the fit, else None."""
    run = Path(results) / run_id
    rec = read_result(run)
    return run if rec and rec.get("status") == "done" and (run / "artifacts").is_dir() else None


def find_fit(results: Path, cfg) -> tuple[Path, dict] | None:
    """(directory, record) of `cfg`'s fit: in the fit store, else in an old-layout run of the same config."""
    fdir = fit_dir(results, cfg.fit_id)
    rec = read_fit(fdir)
    if rec is not None:
        return fdir, rec
    legacy = legacy_fit(results, cfg.run_id)
    if legacy is not None:
        old = read_result(legacy)
        return legacy, {"fit_id": cfg.fit_id, "fitted": old["method"].get("fitted", {}),
                        "timings": {k: v for k, v in old.get("timings", {}).items() if not k.startswith("eval")},
                        "legacy_run": legacy.name}
    return None


def eval_key(split: str, task: str, limit: int | None, n_samples: int) -> str:
    from tasks import file_stem
    return f"{split}-{file_stem(task)}-n{limit or 'all'}-S{n_samples}"


def read_eval(fdir: Path, key: str) -> tuple[dict, np.ndarray, np.ndarray, list] | None:
    """(record, probs [N, K], labels [N], rows) of a stored evaluation, else None."""
    d = Path(fdir) / "evals" / key
    try:
        rec = json.loads((d / "record.json").read_text())
        rows = [json.loads(line) for line in open(d / "predictions.jsonl")]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return rec, *prediction_arrays(rows), rows


def write_eval(fdir: Path, key: str, record: dict, rows: list[dict]) -> None:
    """Store one evaluation; a concurrent writer of the same evaluation wins, ours is dropped (same numbers)."""
    root = Path(fdir) / "evals"
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=root))
    try:
        write_json_atomic(tmp / "record.json", record)
        with open(tmp / "predictions.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        try:
            tmp.rename(root / key)
        except OSError:  # already there (another process): keep theirs
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def clean_orphans(results: Path, eval_tmp_age_s: float = 3600.0) -> None:
    """Remove temp directories that killed processes left in the store: a fit's, when no live process holds
    its lock; an evaluation's (written in a moment, no lock of its own), when older than `eval_tmp_age_s`."""
    import time

    from runners.lock import is_stale, lock_path
    root = fits_root(results)
    for tmp in root.glob(".tmp-*"):
        fid = tmp.name[len(".tmp-"):].rsplit("-", 1)[0]
        lock = lock_path(results, f"fit-{fid}")
        if not lock.exists() or is_stale(lock):
            shutil.rmtree(tmp, ignore_errors=True)
    for tmp in root.glob("*/evals/.tmp-*"):
        try:
            old = time.time() - tmp.stat().st_mtime > eval_tmp_age_s
        except FileNotFoundError:  # its writer finished meanwhile
            continue
        if old:
            shutil.rmtree(tmp, ignore_errors=True)


def rescoring_config(src: Path, ood=(), limit_eval=None, n_samples=None, eval_batch_size=None):
    """(run config, results directory) that score the fit behind `src` (a finished run directory or
    <results>/fits/<fit id>) on its own sets plus `ood`; limit, S and batch size as the source run's unless
    given. Raises ConfigError, in one line, when `src` holds no finished run or fit, or its fit is not stored."""
    from methods.base import ConfigError
    from runners.config import RunConfig, build_run_config
    rec, results = read_result(src), src.parent
    if rec is None:
        rec, results = read_fit(src), src.parent.parent
    if rec is None or rec.get("status", "done") != "done" or "config" not in rec:
        raise ConfigError(f"--fit {src}: no finished run (result.json) or fit (fit.json) there; give a run "
                          "directory or <results>/fits/<fit id>")
    old = RunConfig.from_dict(rec["config"])
    keep = {k: getattr(old, k) for k in ("model", "seed", "scoring", "normalization", "limit_train", "split_seed",
                                         "val_fraction", "precision", "quant", "adapter", "base_settings")}
    given = lambda x, default: default if x is None else x  # noqa: E731 - unset: as the source run was scored
    cfg = build_run_config(old.method, old.task, old.settings, ood=tuple(dict.fromkeys([*old.ood, *ood])),
                           limit_eval=given(limit_eval, old.limit_eval), n_samples=given(n_samples, old.n_samples),
                           eval_batch_size=given(eval_batch_size, old.eval_batch_size), **keep)
    if find_fit(results, cfg) is None:
        raise ConfigError(f"the fit of {src} is not in {results}/fits; runs written before the fit store need "
                          f"`python benchmark.py migrate --results {results}` first")
    return cfg, results


def ensure_fit(plan, results: Path, data_dir: str | None, device: str, context=None, say=None):
    """(fit dir, fit record, fitted method or None) for `plan` (runners.config.RunPlan): found, or fitted now
    under the fit's lock.

    `context` is (backbone, scorer) to fit on (the run's own); None loads one (a base fitted for its users).
    The method comes back only when it was fitted here (already in memory); callers load a found fit."""
    cfg = plan.cfg
    found = find_fit(results, cfg)
    if found is not None:
        return (*found, None)
    say = say or (lambda m: print(m, file=sys.stderr))
    with claim(results, f"fit-{cfg.fit_id}", on_wait=lambda: say(f"{cfg.fit_id}: another process is fitting "
                                                                 "it; waiting")):
        found = find_fit(results, cfg)
        if found is not None:
            return (*found, None)
        return _fit(plan, results, data_dir, device, context)


def _fit(plan, results, data_dir, device, context):
    import torch

    from backbones import Scorer, load_backbone
    from methods.base import FitData
    from tasks import load_split

    cfg, cls, mcfg = plan.cfg, plan.cls, plan.method_config
    base_dir = Path(cfg.adapter) if cfg.adapter else None
    if plan.base is not None:  # the fit this one starts from: fitted first, on its own backbone
        base_dir = ensure_fit(plan.base, results, data_dir, device)[0] / "artifacts"
    phases = Phases()
    with phases("load"):
        if context is None:
            backbone = load_backbone(cfg.backbone_config(device))
            context = (backbone, Scorer(backbone.tokenizer, cfg.scoring, cfg.normalization))
        backbone, scorer = context
        split_kw = dict(data_dir=data_dir, split_seed=cfg.split_seed, val_fraction=cfg.val_fraction)
        train = load_split(cfg.task, "train", limit=cfg.limit_train, **split_kw)
        val = load_split(cfg.task, "validation", **split_kw)
        base = None
        if base_dir is not None:  # handed over loaded, with the base's own settings when this suite fitted it
            from methods.registry import load_fit
            settings = plan.base.cfg.settings if plan.base is not None else cls.base_settings(mcfg, dict(cfg.base_settings))
            base = load_fit(cls.base_method, base_dir, backbone, scorer, cfg.seed, settings)
    torch.manual_seed(cfg.seed)
    method = cls(mcfg, backbone, scorer, cfg.seed)
    root = fits_root(results)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{cfg.fit_id}-", dir=root))
    try:
        with phases("fit"):
            fitted = method.fit(FitData(train=train, validation=val, workdir=tmp, base=base))
        method.save(tmp / "artifacts")
        rec = {"fit_id": cfg.fit_id, "config": cfg.fit_dict(), "method": cfg.method, "fitted": fitted,
               "base_fit": plan.base.fit_id if plan.base is not None else None,
               "data": {"train_n": len(train), "validation_n": len(val)},
               "trainable_parameters": method.trainable_parameters(),
               "timings": phases.seconds, "memory": phases.memory, "environment": environment(backbone.device)}
        write_json_atomic(tmp / FIT_FILE, rec)
        final = fit_dir(results, cfg.fit_id)
        shutil.rmtree(final, ignore_errors=True)  # an incomplete leftover (no fit.json); we hold the lock
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        try:  # bad input found only now (e.g. a setting the model cannot take) leaves nothing behind
            root.rmdir()
        except OSError:  # other fits are there
            pass
        raise
    return final, rec, method
