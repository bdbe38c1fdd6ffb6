"""One benchmark cell end to end: backbone -> task -> method.fit -> predict -> metrics -> result files.

All inputs are validated before anything is written. The run is assembled in a hidden temp directory and
renamed into place at the end, so `<results>/<run-id>/` is either absent or complete; a run that fails
after validation is recorded with status "failed" and its reason, and is retried on the next call.
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
import traceback
from pathlib import Path

import numpy as np
import torch

from backbones import BackboneError, Scorer, load_backbone
from methods.base import ConfigError, FitData
from methods.registry import get_method
from methods.settings import make_config
from metrics import compute_metrics, ood_auroc, posterior_diagnostics, predictive_probs, reliability
from runners.config import RunConfig, base_run_config
from runners.evaluate import predict
from runners.results import Phases, environment, finished, write_json_atomic
from runners.lock import claim, is_stale, lock_path
from tasks import TaskError, check_task, file_stem, load_split, resolve_data_dir


def preflight(cfg: RunConfig, data_dir: str | None) -> None:
    """Everything that can be checked without loading a model; raises a one-line error."""
    cls = get_method(cfg.method)
    check_task(cfg.task, ("train", "validation", "test"), data_dir=data_dir)
    for t in cfg.ood:
        check_task(t, ("test",), data_dir=data_dir)
    if cfg.adapter is not None:
        try:
            get_method(cls.base_method).check_saved(Path(cfg.adapter))
        except ConfigError as e:
            raise ConfigError(f"--adapter {cfg.adapter}: {e}") from None


def n_samples_for(cfg: RunConfig) -> int:
    """The S this run's evaluations draw: the method declares it from its settings and the request."""
    return get_method(cfg.method).samples_for(cfg.method_config(), cfg.n_samples)


def write_predictions(path: Path, examples, probs: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for e, p in zip(examples, probs):
            f.write(json.dumps({"id": e.id, "label": e.label, "probs": [round(float(x), 7) for x in p[: e.n_choices]]}) + "\n")


def _clean_orphans(results_dir: Path) -> None:
    """Remove the temp directories of runs that died (no live lock holds them); live runs hold their lock."""
    for tmp in Path(results_dir).glob(".tmp-*"):
        lock = lock_path(results_dir, tmp.name[len(".tmp-"):])
        if not lock.exists() or is_stale(lock):
            shutil.rmtree(tmp, ignore_errors=True)


def execute(cfg: RunConfig, results_dir: Path, data_dir: str | None = None, device: str = "auto",
            force: bool = False, log=None) -> dict:
    """Run `cfg` unless an identical finished run exists; return its result record.

    The cell is claimed first (runners/lock.py): a second identical call waits for the first and returns
    its result instead of computing it again."""
    data_dir = resolve_data_dir(data_dir)
    preflight(cfg, data_dir)
    final = Path(results_dir) / cfg.run_id
    done = finished(final)
    if done and not force:
        return {**done, "skipped": True}
    base = base_run_config(cfg)
    adapter = Path(cfg.adapter) if cfg.adapter else None
    if base is not None:  # post-hoc methods, ensembles: reuse (or first fit) the base of the same cell
        base_rec = execute(base, results_dir, data_dir, device)
        if base_rec.get("status") != "done":
            raise RuntimeError(f"base {base.method} run {base.run_id} did not finish: {base_rec.get('error')}")
        adapter = Path(results_dir) / base.run_id / "artifacts"
    Path(results_dir).mkdir(parents=True, exist_ok=True)
    say = log or (lambda msg: print(msg, file=sys.stderr))
    with claim(results_dir, cfg.run_id, on_wait=lambda: say(f"{cfg.run_id}: another process is running this "
                                                             "cell; waiting for it")) as waited:
        done = finished(final)
        if done and (waited or not force):
            return {**done, "skipped": True}
        _clean_orphans(results_dir)
        return _execute_claimed(cfg, results_dir, data_dir, device, base, adapter)


def _execute_claimed(cfg, results_dir, data_dir, device, base, adapter) -> dict:
    final = Path(results_dir) / cfg.run_id
    tmp = Path(results_dir) / f".tmp-{cfg.run_id}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    phases = Phases()
    record = {"run_id": cfg.run_id, "status": "running", "config": cfg.to_dict(),
              "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    try:
        record.update(_run(cfg, tmp, data_dir, device, phases, adapter))
        record["base_run"] = base.run_id if base is not None else None
        record["status"] = "done"
    except (ConfigError, BackboneError, TaskError):
        # bad input found only once the model is loaded (e.g. an adapter of another model): nothing is kept
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except BaseException as e:  # recorded (Ctrl-C too), then re-raised for the caller (the sweep decides whether to go on)
        record.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=8))
        _finish(record, phases, tmp, final)
        raise
    _finish(record, phases, tmp, final)
    return record


def _finish(record: dict, phases: Phases, tmp: Path, final: Path) -> None:
    record["timings"], record["memory"] = phases.seconds, phases.memory
    write_json_atomic(tmp / "result.json", record)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def _run(cfg: RunConfig, out: Path, data_dir: str | None, device: str, phases: Phases,
         adapter: Path | None) -> dict:
    cls = get_method(cfg.method)
    mcfg = cfg.method_config()
    torch.manual_seed(cfg.seed)
    with phases("load"):
        backbone = load_backbone(cfg.backbone_config(device))
        scorer = Scorer(backbone.tokenizer, cfg.scoring, cfg.normalization)
        split_kw = dict(data_dir=data_dir, split_seed=cfg.split_seed, val_fraction=cfg.val_fraction)
        train = load_split(cfg.task, "train", limit=cfg.limit_train, **split_kw)
        val = load_split(cfg.task, "validation", **split_kw)
        evals = {cfg.task: load_split(cfg.task, cfg.eval_split, limit=cfg.limit_eval, **split_kw),
                 **{t: load_split(t, "test", limit=cfg.limit_eval, **split_kw) for t in cfg.ood}}
    method = cls(mcfg, backbone, scorer, cfg.seed)
    base = None
    if adapter is not None:  # the fit this method starts from, handed over loaded
        base_cls = get_method(cls.base_method)
        base_cfg = make_config(base_cls.Config, cls.base_settings(mcfg, dict(cfg.base_settings)))
        base = base_cls(base_cfg, backbone, scorer, cfg.seed)
        with phases("load"):
            base.load(adapter)
    with phases("fit"):
        fitted = method.fit(FitData(train=train, validation=val, workdir=out, base=base))
    method.save(out / "artifacts")
    S = n_samples_for(cfg)
    metrics, rel, conf = {}, {}, {}
    for t, examples in evals.items():
        with phases(f"eval:{t}"):
            scored = predict(method, examples, S, cfg.eval_batch_size, cfg.seed, desc=f"eval {t}",
                             point=method.has_point_estimate)
        logp, point = scored if method.has_point_estimate else (scored, None)
        probs = predictive_probs(logp)
        labels = np.array([e.label for e in examples])
        write_predictions(out / "predictions" / f"{file_stem(t)}.jsonl", examples, probs)
        metrics[t] = {"role": "id" if t == cfg.task else "ood", **compute_metrics(probs, labels),
                      "diagnostics": posterior_diagnostics(logp, None if point is None else np.exp(point))}
        rel[t] = reliability(probs, labels)
        conf[t] = probs.max(1)
    for t in cfg.ood:  # OOD detection: does max-probability separate ID test from this OOD set?
        metrics[t]["ood_auroc_maxprob"] = ood_auroc(conf[cfg.task], conf[t])
    return {"method": {"name": cfg.method, "config": mcfg.to_dict(), "fitted": fitted, "posthoc": cls.posthoc,
                       "stochastic": method.stochastic, "n_samples": S,
                       "trainable_parameters": method.trainable_parameters()},
            "task": cfg.task, "model": cfg.model, "seed": cfg.seed, "scoring": scorer.describe(),
            "data": {"train_n": len(train), "validation_n": len(val), "data_dir": data_dir or "huggingface-hub"},
            "metrics": metrics, "reliability": rel, "environment": environment(backbone.device)}
